"""Step 6, validation: reload the saved artifact, check it reproduces the trained model, held-out loss.

The merged model when it was saved, else the base model plus the saved adapter. Its logits on
the probe input of step 5 must match the trained model's. A k-bit base is reloaded k-bit with the
adapter instead, so steps 6-8 grade it at the precision step 0 graded the base model in
(docs/grading.md); its outputs are not compared, as training upcasts its other layers to fp32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from lora_contract.api import ModelSpec
from lora_trainer.context import RunContext
from lora_trainer.errors import StepError
from lora_trainer.evaluation import heldout_loss
from lora_trainer.modeling import load_model, release_memory

# Allowed max |logit difference| relative to the largest logit: float rounding of the merge only.
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 5e-2}


def _reload(ctx: RunContext) -> tuple[Any, str]:
    spec, artifacts = ctx.spec, ctx.artifacts
    if ctx.quantized:
        base = load_model(spec.model, ctx.dtype, ctx.evaluation_placement).model
        return PeftModel.from_pretrained(base, str(artifacts.adapter)), "k-bit base model + adapter"
    if artifacts.merged:
        merged = ModelSpec(path=str(Path(artifacts.merged).resolve()), trust_remote_code=spec.model.trust_remote_code)
        return load_model(merged, ctx.dtype, ctx.evaluation_placement).model, "merged model"
    # merged in memory, so the graded model runs as fast as the base did
    base = load_model(spec.model, ctx.dtype, ctx.evaluation_placement).model
    return PeftModel.from_pretrained(base, str(artifacts.adapter)).merge_and_unload(), "base model + adapter"


def run(ctx: RunContext) -> str:
    spec, data = ctx.spec, ctx.dataset
    release_memory()  # the trained model, whose references step 5 dropped
    ctx.eval_model, what = _reload(ctx)
    model = ctx.eval_model
    model.eval()
    probe, expected = ctx.saved_probe
    with torch.inference_mode():
        logits = model(input_ids=probe.to(next(model.parameters()).device)).logits.float().cpu()
    if not torch.isfinite(logits).all():
        raise StepError(f"the reloaded {what} produces non-finite logits")
    parts = [f"reloaded {what}"]
    if ctx.quantized:
        parts.append("outputs not compared (training upcast the non-quantized layers to fp32)")
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
