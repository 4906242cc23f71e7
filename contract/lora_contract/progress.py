"""Trainer events and the pure reducer that turns them into the trainer's reported state.

The trainer emits one small JSON event per step boundary, logged training step,
evaluation and grading (one stable format every consumer reads: the progress reporter,
the CLI's live checklist, logs). ``reduce`` folds events into a ``TrainerStatus``; the
trainer POSTs it to the operator (``ProgressReport``), which alone writes it into
``status.trainer``, and at the end puts a compact copy in the pod's termination message
(``final_summary``), which the operator validates with the same model.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from lora_contract.api import (
    LOSS_HISTORY_POINTS,
    PIPELINE_STEPS,
    REPORT_MESSAGE_LIMIT,
    STEP_MESSAGE_LIMIT,
    Artifacts,
    GradeScores,
    Improvements,
    LossPoint,
    StepState,
    StepStatus,
    TrainerStatus,
)
from lora_contract.wire import timestamp

# Share of overall progress each pipeline step is worth; training dominates wall time.
STEP_WEIGHTS: tuple[int, ...] = (6, 5, 5, 1, 60, 5, 4, 4, 8, 2)
assert len(STEP_WEIGHTS) == len(PIPELINE_STEPS) and sum(STEP_WEIGHTS) == 100

TERMINATION_MESSAGE_LIMIT = 4096


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    time: str = Field(default_factory=timestamp)


class StepEvent(_Event):
    """A pipeline step changed state."""

    type: Literal["step"] = "step"
    index: int = Field(ge=0, lt=len(PIPELINE_STEPS))
    state: StepState
    message: str | None = None


class TrainEvent(_Event):
    """One logged optimizer step (LLaMA-Factory style record)."""

    type: Literal["train"] = "train"
    step: int
    total_steps: int = Field(alias="totalSteps")
    loss: float
    learning_rate: float | None = Field(None, alias="learningRate")
    epoch: float | None = None
    tokens_per_second: float | None = Field(None, alias="tokensPerSecond")
    eta_seconds: float | None = Field(None, alias="etaSeconds")


class EvalEvent(_Event):
    type: Literal["eval"] = "eval"
    step: int
    eval_loss: float = Field(alias="evalLoss")


class MetricsEvent(_Event):
    """Graded scores of the base model (before) or the trained one (after)."""

    type: Literal["metrics"] = "metrics"
    which: Literal["before", "after"]
    scores: GradeScores


class ReportEvent(_Event):
    """The run's result: improvements, the distinct training items (the operator awards XP for them) and
    where the artifacts are."""

    type: Literal["report"] = "report"
    improvements: Improvements
    train_items: int = Field(alias="trainItems")
    artifacts: Artifacts


class NoteEvent(_Event):
    """News within an Active step ("graded 12/40 answers"): the step's message, and proof of progress for
    the Stalled condition in steps that log no training steps."""

    type: Literal["note"] = "note"
    index: int = Field(ge=0, lt=len(PIPELINE_STEPS))
    message: str


class FailureEvent(_Event):
    type: Literal["failure"] = "failure"
    message: str


class StopEvent(_Event):
    """A stop signal (a pod deleted, a drain, a preemption, Ctrl-C) ended this attempt inside step ``index``,
    which stays Active: it is not done, and a retry takes it up again (from the checkpoint the message
    names, in training)."""

    type: Literal["stop"] = "stop"
    index: int = Field(ge=0, lt=len(PIPELINE_STEPS))
    message: str


TrainerEvent = Annotated[
    StepEvent | NoteEvent | TrainEvent | EvalEvent | MetricsEvent | ReportEvent | FailureEvent | StopEvent,
    Field(discriminator="type"),
]
_EVENT = TypeAdapter(TrainerEvent)


def parse_event(line: str | dict[str, Any]) -> TrainerEvent:
    """Parse one JSON event; raises ``ValueError`` with the reason on bad input."""
    data = json.loads(line) if isinstance(line, str) else line
    return _EVENT.validate_python(data)


def dump_event(event: TrainerEvent) -> str:
    return json.dumps(event.model_dump(by_alias=True, exclude_none=True), separators=(",", ":"))


def initial_status() -> TrainerStatus:
    """The trainer's state before its first step."""
    return TrainerStatus(
        current_step=0, total_steps=len(PIPELINE_STEPS) - 1, step_name=PIPELINE_STEPS[0],
        step_summary=f"0/{len(PIPELINE_STEPS) - 1} {PIPELINE_STEPS[0]}",
        steps=[StepStatus(name=n) for n in PIPELINE_STEPS], progress=0,
    )


def add_loss_point(points: list[LossPoint], point: LossPoint, total_steps: int,
                   limit: int = LOSS_HISTORY_POINTS) -> list[LossPoint]:
    """Add ``point`` to a history of at most ``limit`` points spread evenly over the whole run.

    The run's steps fall into ``limit - 1`` equal buckets; each keeps only its newest point, and the
    run's first point stays. Resampling an already shortened list instead would keep cutting out
    its middle.
    """
    # Training that starts again from an earlier step (a resume) replaces the points it repeats.
    kept = [p for p in points if p.step < point.step]
    stride = 1 if total_steps <= limit else math.ceil(total_steps / (limit - 2))
    if len(kept) >= 2 and kept[-1].step // stride == point.step // stride:
        kept[-1] = point
    else:
        kept.append(point)
    return kept if len(kept) <= limit else [kept[0], *kept[-limit + 1:]]


def _progress(steps: list[StepStatus], train_fraction: float) -> int:
    done = 0.0
    for weight, step in zip(STEP_WEIGHTS, steps, strict=True):
        if step.state in ("Completed", "Skipped"):
            done += weight
        elif step.state == "Active" and step.name == "training":
            done += weight * train_fraction
    return min(100, math.floor(done))


def finite(value: float | None, digits: int = 6) -> float | None:
    """Rounded, or None for NaN and infinity: JSON cannot carry them, and the operator refuses a report
    that has one (a diverged loss must not cost the run all its progress reports)."""
    return round(value, digits) if value is not None and math.isfinite(value) else None


def _finite_scores(scores: GradeScores) -> GradeScores:
    return GradeScores.model_validate({k: v if not isinstance(v, float) or math.isfinite(v) else None
                                       for k, v in scores.model_dump().items()})


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def reduce(status: TrainerStatus, event: TrainerEvent) -> TrainerStatus:
    """Return a new status with ``event`` applied (``status`` is not modified)."""
    new = status.model_copy(deep=True)
    if len(new.steps) != len(PIPELINE_STEPS):
        new.steps = initial_status().steps
    train_fraction = 0.0
    if new.training_total_steps:
        train_fraction = min(1.0, (new.training_step or 0) / new.training_total_steps)
    new.last_progress_time = event.time

    if isinstance(event, StepEvent):
        step = new.steps[event.index]
        if event.state == "Active":
            step.start_time, step.end_time = event.time, None
        else:
            step.start_time = step.start_time or event.time
            step.end_time = event.time
        step.state = event.state
        if event.message is not None:
            step.message = _cut(event.message, STEP_MESSAGE_LIMIT)
        if event.state in ("Active", "Failed") or event.index >= (new.current_step or 0):
            new.current_step = event.index
            new.step_name = PIPELINE_STEPS[event.index]
            new.step_summary = f"{event.index}/{len(PIPELINE_STEPS) - 1} {PIPELINE_STEPS[event.index]}"
    elif isinstance(event, NoteEvent):
        new.steps[event.index].message = _cut(event.message, STEP_MESSAGE_LIMIT)
    elif isinstance(event, TrainEvent):
        new.training_step, new.training_total_steps, new.loss = event.step, event.total_steps, finite(event.loss)
        if event.learning_rate is not None:
            new.learning_rate = finite(event.learning_rate, 10)
        if event.epoch is not None:
            new.epoch = finite(event.epoch, 4)
        if event.eta_seconds is not None and math.isfinite(event.eta_seconds):
            new.eta_seconds = max(0, int(event.eta_seconds))
        if new.loss is not None:
            new.loss_history = add_loss_point(new.loss_history, LossPoint(step=event.step, loss=new.loss),
                                              event.total_steps)
        train_fraction = min(1.0, event.step / event.total_steps) if event.total_steps else 0.0
    elif isinstance(event, EvalEvent):
        new.eval_loss = finite(event.eval_loss)
    elif isinstance(event, MetricsEvent):
        setattr(new, event.which, _finite_scores(event.scores))
    elif isinstance(event, ReportEvent):
        new.improvements = Improvements.model_validate(
            {k: finite(v, 4) for k, v in event.improvements.model_dump().items()})
        new.train_items = event.train_items
        new.artifacts = event.artifacts
    elif isinstance(event, FailureEvent):
        new.message = _cut(event.message, REPORT_MESSAGE_LIMIT)
    elif isinstance(event, StopEvent):
        new.steps[event.index].message = _cut(event.message, STEP_MESSAGE_LIMIT)
        new.message = _cut(event.message, REPORT_MESSAGE_LIMIT)

    new.progress = _progress(new.steps, train_fraction)
    return new


def dump_status(status: TrainerStatus) -> dict[str, Any]:
    """The JSON form, as the status and the report carry it."""
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


# Fields of the final summary, most important first: what is dropped to fit the
# termination message's 4 KiB is the least important.
_SUMMARY_FIELDS = (
    "trainItems", "improvements", "before", "after", "artifacts", "loss", "evalLoss",
    "currentStep", "totalSteps", "stepName", "stepSummary", "progress", "trainingStep",
    "trainingTotalSteps", "epoch", "message", "steps", "lossHistory",
)


def final_summary(status: TrainerStatus, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """Compact JSON of the run's result that fits the pod termination message (a ``TrainerStatus``)."""
    full = dump_status(status)
    summary = {k: full[k] for k in _SUMMARY_FIELDS if k in full}
    if "steps" in summary:  # timestamps are the bulkiest part and the least needed
        summary["steps"] = [{"name": s["name"], "state": s["state"]} for s in summary["steps"]]
    text = json.dumps(summary, separators=(",", ":"))
    while len(text.encode()) > limit and summary:
        summary.popitem()
        text = json.dumps(summary, separators=(",", ":"))
    return text
