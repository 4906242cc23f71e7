"""Step 6, validation: reload the saved artifact, check it reproduces the trained model, held-out loss.

The merged model when it was saved, else the base model plus the saved adapter. Its logits on
the probe input of step 5 must match the trained model's (not for a k-bit base, whose merge is
deliberately done in full precision).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel

from lora_operator.api import ModelSpec
from lora_trainer.context import RunContext
from lora_trainer.errors import StepError
from lora_trainer.evaluation import heldout_loss
from lora_trainer.modeling import load_model

# Allowed max |logit difference| relative to the largest logit: float rounding of the merge only.
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 5e-2}


def run(ctx: RunContext) -> str:
    spec, data = ctx.spec, ctx.need("data")
    artifacts = ctx.artifacts
    if artifacts.merged:
        ctx.eval_model = load_model(ModelSpec(path=str(Path(artifacts.merged).resolve())), ctx.dtype).model
        what = "merged model"
    else:  # merged in memory unless k-bit, so the graded model runs as fast as the base did
        loaded = load_model(spec.model, ctx.dtype)
        with_adapter = PeftModel.from_pretrained(loaded.model, str(artifacts.adapter))
        ctx.eval_model = with_adapter if loaded.quantized else with_adapter.merge_and_unload()
        what = "base model + adapter"
    model = ctx.eval_model
    model.eval()
    probe, expected = ctx.need("probe")
    with torch.inference_mode():
        logits = model(input_ids=probe.to(next(model.parameters()).device)).logits.float().cpu()
    if not torch.isfinite(logits).all():
        raise StepError(f"the reloaded {what} produces non-finite logits")
    parts = [f"reloaded {what}"]
    if ctx.need("loaded").quantized:
        parts.append("k-bit base: outputs not compared (merged in full precision)")
    else:
        diff = (logits - expected).abs().max().item()
        tolerance = TOLERANCE.get(next(model.parameters()).dtype, 5e-2) * max(1.0, expected.abs().max().item())
        if diff > tolerance:
            raise StepError(f"the reloaded {what} differs from the trained model: max |logit difference| "
                            f"{diff:.3g} > {tolerance:.3g}")
        parts.append(f"outputs match the trained model (max |logit difference| {diff:.2g})")
    ctx.validation_loss = heldout_loss(model, data.validation, spec.lora.max_length, spec.lora.completion_only_loss)
    loss, ppl = ctx.validation_loss
    if loss is None:
        parts.append("no held-out loss (empty validation split)")
    else:
        before = ctx.before.eval_loss if ctx.before else None
        parts.append(f"held-out loss {loss:.4f} (perplexity {ppl:.2f})"
                     + (f", base model {before:.4f}" if before is not None else ""))
    return "; ".join(parts)
