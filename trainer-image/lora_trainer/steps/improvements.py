"""Step 9, improvements: before/after comparison, the XP the run earns, and the run's report event.

The product spec's formulas, made sound: a change relative to a zero (or missing) baseline is
undefined and reported as null rather than dividing by zero (docs/grading.md).
"""

from __future__ import annotations

import shutil

from lora_contract.api import GradeScores, Improvements
from lora_contract.progress import ReportEvent
from lora_contract.rendering import speed_text
from lora_contract.xp import award_xp, knowledge_points, quality_multiplier, quality_signal
from lora_trainer.context import RunContext
from lora_trainer.refine import xp_items
from lora_trainer.steps.saving import folder_bytes, human_bytes


def percent_change(old: float | None, new: float | None) -> float | None:
    """(new - old) / |old| x 100; None without both values or with a zero baseline."""
    if old is None or new is None or old == 0:
        return None
    return round((new - old) / abs(old) * 100, 2)


def _difference(old: float | None, new: float | None) -> float | None:
    return None if old is None or new is None else round(new - old, 6)


def improvements(before: GradeScores | None, after: GradeScores | None) -> Improvements:
    """Quality: weighted overall (higher is better). Speed: tokens per second on the fixed workload
    (``lora_trainer.speed``: answer length cannot move it), positive = faster, with the larger of the two
    noise bands; answer length: mean new tokens of the graded answers, a figure of its own. Loss delta and
    perplexity change: negative = better."""
    b, a = before or GradeScores(), after or GradeScores()
    speed = percent_change(b.bench_tokens_per_second, a.bench_tokens_per_second)
    return Improvements(
        quality_percent=percent_change(b.weighted_overall, a.weighted_overall),
        quality_points=_difference(b.weighted_overall, a.weighted_overall),
        knowledge_points=None if (k := knowledge_points(b.eval_loss, a.eval_loss)) is None else round(k, 4),
        speed_percent=speed,
        speed_noise_percent=None if speed is None else max(b.bench_noise_percent or 0.0, a.bench_noise_percent or 0.0),
        answer_length_percent=percent_change(b.mean_answer_tokens, a.mean_answer_tokens),
        eval_loss_delta=_difference(b.eval_loss, a.eval_loss),
        perplexity_percent=percent_change(b.perplexity, a.perplexity),
    )


def tidy(ctx: RunContext) -> list[str]:
    """The run's last writes: the evaluation records to each destination, then, unless output.keepCheckpoints,
    the checkpoints removed from the volume and the first s3:// destination (the adapter is saved and verified by now;
    a retry after this point would start training over, so it is the last thing before the report)."""
    parts = []
    for store in ctx.buckets:
        sent = store.upload_tree(ctx.output_dir, ctx.layout.evaluation.name)
        parts.append(f"evaluation records uploaded to {store.dest.uri} ({sent} new)")
    if ctx.spec.output.keep_checkpoints:
        return parts
    checkpoints, mirror = ctx.layout.checkpoints, ctx.checkpoint_mirror
    if not checkpoints.exists() and mirror is None:  # nothing was saved (a run resumed past training elsewhere)
        return parts
    freed = folder_bytes(checkpoints)
    shutil.rmtree(checkpoints, ignore_errors=True)
    freed += mirror.remove() if mirror else 0
    ctx.artifacts.checkpoints_removed_bytes = freed
    return [*parts, f"checkpoints removed, {human_bytes(freed)} freed (output.keepCheckpoints keeps them)"]


def run(ctx: RunContext) -> str:
    result = improvements(ctx.before, ctx.after)
    # Distinct items only, by a fixed rule: repeating rows or near-copies (refine loosened) earns no XP.
    train_items = xp_items(ctx.dataset.train)
    housekeeping = tidy(ctx)
    ctx.emit(ReportEvent(improvements=result, train_items=train_items, artifacts=ctx.artifacts))
    # The operator awards the XP (to a Succeeded run of a trusted image without hub code); this is its figure.
    knowledge = result.knowledge_points
    signal = quality_signal(result.quality_points, knowledge)
    xp = award_xp(train_items, signal)
    parts = [f"the operator awards {xp} XP for {train_items} distinct training items (quality multiplier "
             f"{quality_multiplier(signal):.2f}" + (", nothing measured" if signal is None else "") + ")"]
    if result.quality_points is not None:
        parts.append(f"quality {result.quality_points:+.1f} points")
    if knowledge is not None:
        parts.append(f"knowledge {knowledge:+.1f} points")
    if result.eval_loss_delta is not None:
        parts.append(f"held-out loss {result.eval_loss_delta:+.4f}")
    if result.speed_percent is not None:
        parts.append(speed_text(result.speed_percent, result.speed_noise_percent))
    if result.answer_length_percent is not None:
        parts.append(f"answer length {result.answer_length_percent:+.1f}%")
    return "; ".join(parts + housekeeping)
