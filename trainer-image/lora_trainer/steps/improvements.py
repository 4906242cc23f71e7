"""Step 9, improvements: before/after comparison, the XP the run earns, and the run's report event.

The product spec's formulas, made sound: a change relative to a zero (or missing) baseline is
undefined and reported as null rather than dividing by zero (docs/grading.md).
"""

from __future__ import annotations

from lora_contract.api import GradeScores, Improvements
from lora_contract.progress import ReportEvent
from lora_contract.xp import award_xp, quality_multiplier
from lora_trainer.context import RunContext
from lora_trainer.refine import normalized


def percent_change(old: float | None, new: float | None) -> float | None:
    """(new - old) / |old| x 100; None without both values or with a zero baseline."""
    if old is None or new is None or old == 0:
        return None
    return round((new - old) / abs(old) * 100, 2)


def _difference(old: float | None, new: float | None) -> float | None:
    return None if old is None or new is None else round(new - old, 6)


def _seconds_per_token(scores: GradeScores) -> float | None:
    """Generation time per generated token: unlike time per answer, it does not reward shorter answers."""
    return 1 / scores.tokens_per_second if scores.tokens_per_second else None


def improvements(before: GradeScores | None, after: GradeScores | None) -> Improvements:
    """Quality: weighted overall (higher is better). Speed: seconds per generated token, positive =
    faster. Loss delta and perplexity change: negative = better."""
    b, a = before or GradeScores(), after or GradeScores()
    speed = percent_change(_seconds_per_token(b), _seconds_per_token(a))
    return Improvements(
        quality_percent=percent_change(b.weighted_overall, a.weighted_overall),
        quality_points=_difference(b.weighted_overall, a.weighted_overall),
        speed_percent=None if speed is None else 0.0 - speed,  # (before - after) / before; no -0.0
        eval_loss_delta=_difference(b.eval_loss, a.eval_loss),
        perplexity_percent=percent_change(b.perplexity, a.perplexity),
    )


def run(ctx: RunContext) -> str:
    result = improvements(ctx.before, ctx.after)
    # Distinct items only: repeating the same rows (dedupe off) earns no XP.
    train_items = len({normalized(e.text) for e in ctx.dataset.train})
    ctx.emit(ReportEvent(improvements=result, train_items=train_items, artifacts=ctx.artifacts))
    # The operator awards the XP (to a Succeeded run of a trusted image); this is its figure by the shared table.
    xp = award_xp(train_items, result.quality_points)
    parts = [f"the operator awards {xp} XP for {train_items} distinct training items (quality multiplier "
             f"{quality_multiplier(result.quality_points):.2f}"
             + (", nothing graded" if result.quality_points is None else "") + ")"]
    if result.quality_points is not None:
        parts.append(f"quality {result.quality_points:+.1f} points")
    if result.eval_loss_delta is not None:
        parts.append(f"held-out loss {result.eval_loss_delta:+.4f}")
    if result.speed_percent is not None:
        parts.append(f"speed {result.speed_percent:+.1f}%")
    return "; ".join(parts)
