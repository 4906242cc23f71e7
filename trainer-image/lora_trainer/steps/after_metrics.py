"""Step 8, after-metrics: step 0's evaluation on the trained model, on the same items.

The held-out loss is step 6's: same reloaded model, same validation split.
"""

from __future__ import annotations

from lora_contract.progress import MetricsEvent
from lora_trainer.context import RunContext
from lora_trainer.steps.before_metrics import describe, measure


def run(ctx: RunContext) -> str:
    ctx.after = measure(ctx, ctx.trained_model, "after", ctx.validation_loss)
    ctx.emit(MetricsEvent(which="after", scores=ctx.after))
    return "; ".join(p for p in (describe(ctx.after, "trained model"), "same items as before-metrics",
                                 ctx.judge_fallback) if p)
