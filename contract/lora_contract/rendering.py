"""Plain-text rendering of a run's result, shared so that the trainer's console and the operator's
``python -m lora_operator.report`` show the same table for the same numbers."""

from __future__ import annotations

from collections.abc import Callable

from lora_contract.api import Artifacts, Improvements, TrainerStatus

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
    ("answer tokens / s", "tokens_per_second"),
    ("answer tokens", "mean_answer_tokens"),
    ("speed, tokens / s", "bench_tokens_per_second"),
    ("graded items", "items"),
)


def number(value: float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if abs(value) < 10 else f"{value:.1f}"


def speed_text(speed_percent: float, noise_percent: float | None) -> str:
    """'speed: no change (within ±2.1%)' for a change inside the noise band (a band that is unknown counts
    as none), else 'speed: +12.0% faster' or 'speed: -8.0% slower': a timing difference that repeated runs
    of one model also show is not a change of the model (docs/grading.md)."""
    noise = noise_percent or 0.0
    if abs(speed_percent) <= noise:
        return f"speed: no change (within ±{noise:.1f}%)"
    return f"speed: {speed_percent:+.1f}% {'faster' if speed_percent > 0 else 'slower'}"


# (Improvements field, its text given its value and the improvements) of the improvements line.
_IMPROVEMENTS: tuple[tuple[str, Callable[[float, Improvements], str]], ...] = (
    ("quality_percent", lambda value, _: f"quality {value:+.1f}%"),
    ("quality_points", lambda value, _: f"quality {value:+.1f} points"),
    ("knowledge_points", lambda value, _: f"knowledge {value:+.1f} points"),
    ("speed_percent", lambda value, improvements: speed_text(value, improvements.speed_noise_percent)),
    ("answer_length_percent", lambda value, _: f"answer length {value:+.1f}%"),
    ("eval_loss_delta", lambda value, _: f"held-out loss {value:+.4f}"),
    ("perplexity_percent", lambda value, _: f"perplexity {value:+.1f}%"),
)


def describe_improvements(improvements: Improvements | None) -> list[str]:
    """The improvements line's parts, in ``_IMPROVEMENTS`` order, for the values that are known."""
    if improvements is None:
        return []
    return [text(value, improvements) for field, text in _IMPROVEMENTS
            if (value := getattr(improvements, field)) is not None]


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
    described = describe_improvements(trainer.improvements)
    if described:
        lines.append("  improvements: " + ", ".join(described))
    if xp is not None:
        lines.append(f"  XP: {xp} for {trainer.train_items or 0} training items")
    if trainer.artifacts:
        lines += artifact_lines(trainer.artifacts)
    return lines


def artifact_lines(artifacts: Artifacts) -> list[str]:
    """Where the results are: the pod's paths, each destination's verified copy, the freed checkpoints."""
    lines = [f"  {name}: {getattr(artifacts, name)}" for name in ("adapter", "merged", "report", "manifest")
             if getattr(artifacts, name)]
    lines += [f"  copy: {c.uri} ({c.files} files, {c.bytes} bytes, manifest {c.digest})"
              for c in artifacts.destinations]
    if artifacts.adapter_uri:
        lines.append(f"  adapter URI: {artifacts.adapter_uri}" + (
            f" (rank {artifacts.lora_rank})" if artifacts.lora_rank else ""))
    if artifacts.checkpoints_removed_bytes is not None:
        lines.append(f"  checkpoints removed: {artifacts.checkpoints_removed_bytes} bytes freed")
    return lines
