"""Step 2, model: wrap the base model in LoRA after checking the target modules against it.

The base model itself is loaded by step 0 (which runs first and grades it untouched); loading it
once saves minutes on large models, and step 0's message says where it came from. The other workers of a
data-parallel run do not run step 0 (rank 0 grades for the run): they load it here. Under FSDP every process,
rank 0 included, loads the copy that FSDP shards here (``modeling.Placement``).
"""

from __future__ import annotations

from transformers import set_seed

from lora_trainer.context import RunContext
from lora_trainer.modeling import apply_lora, load_model, release_memory


def run(ctx: RunContext) -> str:
    if ctx.strategy.sharded:  # FSDP shards a copy loaded for it; rank 0 graded one spread over its GPUs
        ctx.loaded = None
        release_memory()
        ctx.loaded = load_model(ctx.spec.model, ctx.dtype, "fsdp")
        ctx.quantized = ctx.loaded.quantized
    elif ctx.loaded is None and not ctx.world.is_main:
        ctx.loaded = load_model(ctx.spec.model, ctx.dtype)
        ctx.quantized = ctx.loaded.quantized
    lora, loaded = ctx.spec.lora, ctx.base_model
    set_seed(lora.seed)  # the adapter's random init must not depend on whether step 0 generated or reused
    ctx.model = apply_lora(loaded, lora)
    trainable, total = ctx.model.get_nb_trainable_parameters()
    parameter = next(loaded.model.parameters())
    return "; ".join([
        f"base model: {(total - trainable) / 1e6:.1f}M parameters, {str(parameter.dtype).removeprefix('torch.')} "
        f"on {parameter.device.type}",
        f"LoRA r={lora.rank} alpha={lora.alpha:g} dropout={lora.dropout:g} on {', '.join(lora.target_modules)}: "
        f"{trainable:,} trainable parameters ({100 * trainable / total:.2f}%)",
        *loaded.notes,
    ])
