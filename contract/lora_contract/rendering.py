"""Plain-text rendering of a run's result, shared so that the trainer's console and the operator's
``python -m lora_operator.report`` show the same table for the same numbers."""

from __future__ import annotations

from lora_contract.api import TrainerStatus

MARKS = {"Completed": "✓", "Active": "▶", "Failed": "✗", "Pending": "·", "Skipped": "-"}
# (label, GradeScores field) rows of the final report table.
REPORT_ROWS: tuple[tuple[str, str], ...] = (
    ("task accuracy", "task_accuracy"),
    ("completeness", "completeness"),
    ("correctness", "correctness"),
    ("coherence", "coherence"),
    ("overall", "overall"),
    ("weighted overall", "weighted_overall"),
    ("held-out loss", "eval_loss"),
    ("perplexity", "perplexity"),
    ("seconds / answer", "seconds_per_answer"),
    ("tokens / second", "tokens_per_second"),
    ("graded items", "items"),
)
# (Improvements field, format) of the improvements line.
_IMPROVEMENTS: tuple[tuple[str, str], ...] = (
    ("quality_percent", "quality {:+.1f}%"),
    ("quality_points", "quality {:+.1f} points"),
    ("speed_percent", "speed {:+.1f}%"),
    ("eval_loss_delta", "held-out loss {:+.4f}"),
    ("perplexity_percent", "perplexity {:+.1f}%"),
)


def number(value: float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if abs(value) < 10 else f"{value:.1f}"


def report_table(trainer: TrainerStatus, xp: int | None) -> list[str]:
    """Before/after table, improvements, XP and artifacts of a finished run."""
    lines: list[str] = []
    for label, field in REPORT_ROWS:
        b, a = (getattr(scores, field) if scores else None for scores in (trainer.before, trainer.after))
        if b is None and a is None:
            continue
        change = "" if b is None or a is None or field == "items" else f"{a - b:+.4g}"
        lines.append(f"  {label:<18}{number(b):>10}{number(a):>10}{change:>10}")
    if lines:
        lines.insert(0, f"  {'':<18}{'before':>10}{'after':>10}{'change':>10}")
    described = [fmt.format(value) for field, fmt in _IMPROVEMENTS
                 if trainer.improvements and (value := getattr(trainer.improvements, field)) is not None]
    if described:
        lines.append("  improvements: " + ", ".join(described))
    if xp is not None:
        lines.append(f"  XP: {xp} for {trainer.train_items or 0} training items")
    if trainer.artifacts:
        lines += [f"  {name}: {path}" for name, path in trainer.artifacts.model_dump(exclude_none=True).items()]
    return lines
