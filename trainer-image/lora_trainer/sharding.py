"""Which way several trainer processes share a run (``resources.strategy``), and FSDP's settings.

``ddp``: every process holds the whole model and trains its share of each batch (the gradients are
all-reduced). ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``, through accelerate) shards every
parameter, its gradient and its optimizer state over the processes, so a model whose weights do not fit
one GPU trains; each layer is gathered for its forward and backward pass and freed after. ``auto`` picks
ddp when the weights take at most ``FIT_FRACTION`` of one GPU (the rest is the activations, the CUDA
context and the LoRA optimizer state), else fsdp. What was checked for FSDP here and what needs GPUs is in
docs/trainer.md.

The choice must be the same on every process (they would otherwise wait for each other in different
collectives): the inputs are the spec, the model's config and the smallest GPU of the whole group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lora_contract.api import LoraTrainingJobSpec, ModelSpec
from lora_trainer.distributed import World
from lora_trainer.errors import InvalidInput
from lora_trainer.modeling import resolve_source
from lora_trainer.profiles import for_this_machine

FIT_FRACTION = 0.5
QUANTIZED_BYTES = {"4bit": 0.5, "8bit": 1.0}  # per weight of a quantized linear layer (bitsandbytes)


@dataclass(frozen=True)
class Strategy:
    name: Literal["single", "ddp", "fsdp"]
    reason: str

    @property
    def sharded(self) -> bool:
        return self.name == "fsdp"


def weight_bytes(spec: ModelSpec, dtype: torch.dtype, cuda: bool) -> int | None:
    """The base model's weights in memory as the trainer loads them, counted on an empty (meta-device)
    model built from its config: linear layers at their quantized size where bitsandbytes applies (CUDA,
    not GGUF), the rest in ``dtype``. None when the config cannot be read: loading the model then fails
    with the real error, in its step."""
    try:
        source = resolve_source(spec)
        config = AutoConfig.from_pretrained(source.location, **source.kwargs())
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)
    except Exception:  # any unreadable model is step 0's or step 2's error to report
        return None
    head = model.get_output_embeddings()
    quantized = QUANTIZED_BYTES.get(spec.quantization, 0) if cuda and not source.gguf_file else 0
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    total = sum(p.numel() for p in model.parameters())
    return round(linear * quantized + (total - linear) * dtype.itemsize) if quantized else total * dtype.itemsize


def choose(asked: str, world_size: int, weights: int | None, device_memory: int | None) -> Strategy:
    """The strategy for ``world_size`` processes; ``device_memory``: the smallest GPU's bytes (None on CPU)."""
    if world_size == 1:
        return Strategy("single", "one process" + (": nothing to shard (resources.strategy: fsdp)"
                                                    if asked == "fsdp" else ""))
    if asked != "auto":
        return Strategy(asked, f"resources.strategy: {asked}")  # type: ignore[arg-type]
    if device_memory is None:
        return Strategy("ddp", "auto: on CPU every process holds the model in host memory")
    if weights is None:
        return Strategy("ddp", "auto: the model's size is unknown")
    size = f"the weights, {weights / 1e9:.1f} GB,"
    gpu = f"{device_memory / 1e9:.0f} GB GPU"
    if weights <= FIT_FRACTION * device_memory:
        return Strategy("ddp", f"auto: {size} fit one {gpu}")
    return Strategy("fsdp", f"auto: {size} take over {FIT_FRACTION:.0%} of one {gpu}: sharded over {world_size} "
                            f"processes, about {weights / world_size / 1e9:.1f} GB each")


def smallest_gpu(world: World) -> int | None:
    """The smallest GPU memory among all processes (one all-reduce), or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    memory = torch.cuda.get_device_properties(world.local_rank).total_memory
    if world.distributed:
        value = torch.tensor([memory], device="cuda")
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        memory = int(value.item())
    return memory


def for_run(spec: LoraTrainingJobSpec, world: World) -> Strategy:
    """Called by every process at the same point, after the process group is formed. Raises nothing: a
    model or setting it cannot read is reported by the step that uses it."""
    asked, memory = spec.resources.strategy, smallest_gpu(world)
    if not (world.distributed and asked == "auto" and memory and spec.model):
        return choose(asked, world.size, None, memory)
    try:
        dtype = for_this_machine(spec.lora).dtype
    except InvalidInput:  # step 3 reports it
        dtype = torch.bfloat16
    return choose(asked, world.size, weight_bytes(spec.model, dtype, cuda=True), memory)


def fsdp_arguments(model: Any) -> dict[str, Any]:
    """TrainingArguments for FSDP2 on a peft model, as peft's and accelerate's FSDP guides set them: each
    decoder layer its own unit (the model's ``_no_split_modules``), full state dicts so that rank 0 saves
    ordinary adapter checkpoints (and a checkpoint resumes under any world size), resharding after forward.
    FSDP2 shards each parameter on its own (no FSDP1 flat parameters), so frozen base weights and trainable
    LoRA weights may share a unit: FSDP1's ``use_orig_params`` question does not arise."""
    layers = list(getattr(model, "_no_split_modules", None) or [])
    config: dict[str, Any] = {"version": 2, "reshard_after_forward": True, "state_dict_type": "FULL_STATE_DICT"}
    if layers:
        config |= {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "transformer_layer_cls_to_wrap": layers}
    else:
        config |= {"auto_wrap_policy": "SIZE_BASED_WRAP", "min_num_params": 10_000_000}
    return {"fsdp": True, "fsdp_config": config}


def full_adapter(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) parameters, whole, on every process: a sharded parameter (a DTensor) is gathered
    from all of them, so every process must call this at the same point. Only the adapter is gathered, not
    the base model's weights (the Trainer's full state dict would gather those too)."""
    from torch.distributed.tensor import DTensor

    return {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu().clone()
            for name, p in model.named_parameters() if p.requires_grad}


def shard_share(model: torch.nn.Module) -> tuple[int, int]:
    """(elements this process holds, elements of the whole model): what FSDP actually sharded."""
    from torch.distributed.tensor import DTensor

    local = total = 0
    for p in model.parameters():
        total += p.numel()
        local += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
    return local, total
