"""Trainer events and the pure reducer that turns them into the resource's status.

The trainer emits one small JSON event per step boundary, logged training step,
evaluation and grading (one stable format every consumer reads: the status reporter,
the CLI's live checklist, logs). ``reduce`` folds events into the progress part of
``LoraTrainingJobStatus``; the trainer sends the result as a status patch and, at the
end, a compact copy through the pod's termination message (``final_summary``).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from lora_operator.api import (
    PIPELINE_STEPS,
    Artifacts,
    GradeScores,
    Improvements,
    LossPoint,
    StepState,
    StepStatus,
)

# Share of overall progress each pipeline step is worth; training dominates wall time.
STEP_WEIGHTS: tuple[int, ...] = (6, 5, 5, 1, 60, 5, 4, 4, 8, 2)
assert len(STEP_WEIGHTS) == len(PIPELINE_STEPS) and sum(STEP_WEIGHTS) == 100

LOSS_HISTORY_POINTS = 50
TERMINATION_MESSAGE_LIMIT = 4096


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    time: str = Field(default_factory=now_iso)


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
    """The run's result: improvements, XP and where the artifacts are."""

    type: Literal["report"] = "report"
    improvements: Improvements
    xp: int
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


TrainerEvent = Annotated[
    StepEvent | NoteEvent | TrainEvent | EvalEvent | MetricsEvent | ReportEvent | FailureEvent,
    Field(discriminator="type"),
]
_EVENT = TypeAdapter(TrainerEvent)


def parse_event(line: str | dict[str, Any]) -> TrainerEvent:
    """Parse one JSON event; raises ``ValueError`` with the reason on bad input."""
    data = json.loads(line) if isinstance(line, str) else line
    return _EVENT.validate_python(data)


def dump_event(event: TrainerEvent) -> str:
    return json.dumps(event.model_dump(by_alias=True, exclude_none=True), separators=(",", ":"))


def initial_status() -> dict[str, Any]:
    """Progress fields of a run that has not started a step yet."""
    return {
        "currentStep": 0,
        "totalSteps": len(PIPELINE_STEPS) - 1,
        "stepName": PIPELINE_STEPS[0],
        "stepSummary": f"0/{len(PIPELINE_STEPS) - 1} {PIPELINE_STEPS[0]}",
        "steps": [StepStatus(name=n).model_dump(by_alias=True, exclude_none=True) for n in PIPELINE_STEPS],
        "progress": 0,
        "lossHistory": [],
    }


def add_loss_point(points: list[dict[str, Any]], point: dict[str, Any], total_steps: int,
                   limit: int = LOSS_HISTORY_POINTS) -> list[dict[str, Any]]:
    """Add ``point`` to a history of at most ``limit`` points spread evenly over the whole run.

    The run's steps fall into ``limit - 1`` equal buckets; each keeps only its newest point, and the
    run's first point stays. Resampling an already shortened list instead would keep cutting out
    its middle.
    """
    # Training that starts again from an earlier step (a resume) replaces the points it repeats.
    kept = [p for p in points if p["step"] < point["step"]]
    stride = 1 if total_steps <= limit else math.ceil(total_steps / (limit - 2))
    if len(kept) >= 2 and kept[-1]["step"] // stride == point["step"] // stride:
        kept[-1] = point
    else:
        kept.append(point)
    return kept if len(kept) <= limit else [kept[0], *kept[-limit + 1:]]


def _progress(steps: list[dict[str, Any]], train_fraction: float) -> int:
    done = 0.0
    for weight, step in zip(STEP_WEIGHTS, steps, strict=True):
        if step["state"] in ("Completed", "Skipped"):
            done += weight
        elif step["state"] == "Active" and step["name"] == "training":
            done += weight * train_fraction
    return min(100, math.floor(done))


def reduce(status: dict[str, Any], event: TrainerEvent) -> dict[str, Any]:
    """Return a new status dict with ``event`` applied (``status`` is not modified)."""
    new = json.loads(json.dumps(status)) if status else initial_status()
    if "steps" not in new or len(new["steps"]) != len(PIPELINE_STEPS):
        new.update({k: v for k, v in initial_status().items() if k not in new or k == "steps"})
    train_fraction = 0.0
    if new.get("trainingTotalSteps"):
        train_fraction = min(1.0, (new.get("trainingStep") or 0) / new["trainingTotalSteps"])
    new["lastProgressTime"] = event.time

    if isinstance(event, StepEvent):
        step = new["steps"][event.index]
        if event.state == "Active":
            step["startTime"] = event.time
            step.pop("endTime", None)
        else:
            step.setdefault("startTime", event.time)
            step["endTime"] = event.time
        step["state"] = event.state
        if event.message is not None:
            step["message"] = event.message[:1024]
        if event.state in ("Active", "Failed") or event.index >= (new.get("currentStep") or 0):
            new["currentStep"] = event.index
            new["stepName"] = PIPELINE_STEPS[event.index]
            new["stepSummary"] = f"{event.index}/{len(PIPELINE_STEPS) - 1} {PIPELINE_STEPS[event.index]}"
    elif isinstance(event, NoteEvent):
        new["steps"][event.index]["message"] = event.message[:1024]
    elif isinstance(event, TrainEvent):
        new.update(trainingStep=event.step, trainingTotalSteps=event.total_steps, loss=round(event.loss, 6))
        if event.learning_rate is not None:
            new["learningRate"] = event.learning_rate
        if event.epoch is not None:
            new["epoch"] = round(event.epoch, 4)
        if event.eta_seconds is not None:
            new["etaSeconds"] = int(event.eta_seconds)
        point = LossPoint(step=event.step, loss=round(event.loss, 6)).model_dump(by_alias=True)
        new["lossHistory"] = add_loss_point(new.get("lossHistory", []), point, event.total_steps)
        train_fraction = min(1.0, event.step / event.total_steps) if event.total_steps else 0.0
    elif isinstance(event, EvalEvent):
        new["evalLoss"] = round(event.eval_loss, 6)
    elif isinstance(event, MetricsEvent):
        new[event.which] = event.scores.model_dump(by_alias=True, exclude_none=True)
    elif isinstance(event, ReportEvent):
        new["improvements"] = event.improvements.model_dump(by_alias=True, exclude_none=True)
        new["xp"] = event.xp
        new["trainItems"] = event.train_items
        new["artifacts"] = event.artifacts.model_dump(by_alias=True, exclude_none=True)
    elif isinstance(event, FailureEvent):
        new["message"] = event.message[:4096]

    new["progress"] = _progress(new["steps"], train_fraction)
    return _finite(new)


def _finite(value: Any) -> Any:
    """NaN and infinity become None: JSON cannot carry them, and the apiserver would refuse the whole
    status patch (and every later one) over a single such number."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# Fields of the final summary, most important first: what is dropped to fit the
# termination message's 4 KiB is the least important.
_SUMMARY_FIELDS = (
    "xp", "trainItems", "improvements", "before", "after", "artifacts", "loss", "evalLoss",
    "currentStep", "totalSteps", "stepName", "stepSummary", "progress", "trainingStep",
    "trainingTotalSteps", "epoch", "message", "steps", "lossHistory",
)


def final_summary(status: dict[str, Any], limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """Compact JSON of the run's result that fits the pod termination message."""
    summary = {k: status[k] for k in _SUMMARY_FIELDS if k in status}
    if "steps" in summary:  # timestamps are the bulkiest part and the least needed
        summary["steps"] = [{"name": s["name"], "state": s["state"]} for s in summary["steps"]]
    text = json.dumps(summary, separators=(",", ":"))
    while len(text.encode()) > limit and summary:
        summary.popitem()
        text = json.dumps(summary, separators=(",", ":"))
    return text
