"""What the pipeline steps hand to each other during one run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from lora_contract.api import PIPELINE_STEPS, Artifacts, GraderType, GradeScores, LoraTrainingJobSpec
from lora_contract.progress import NoteEvent, TrainerEvent
from lora_trainer.destinations import CheckpointMirror, S3Store, Store
from lora_trainer.distributed import World
from lora_trainer.evaluation import EvalItem
from lora_trainer.formats import Example
from lora_trainer.grader import BuiltinGrader, Grader
from lora_trainer.layout import OutputLayout
from lora_trainer.modeling import LoadedModel, Placement
from lora_trainer.profiles import for_this_machine
from lora_trainer.sharding import Strategy
from lora_trainer.signals import StopSignals

# LoRA fields that only say when to log, evaluate or save: changing them keeps checkpoints usable.
_BOOKKEEPING = {"save_steps", "save_total_limit", "logging_steps", "eval_steps", "divergence_factor"}


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def training_fingerprint(spec: LoraTrainingJobSpec) -> str:
    """Identity of what is trained; a checkpoint is resumed only by a run with the same one."""
    return digest({
        "model": spec.model.model_dump(mode="json"),
        "datasets": [d.model_dump(mode="json") for d in spec.datasets],
        "data": spec.data.model_dump(mode="json"),
        "lora": spec.lora.model_dump(mode="json", exclude=_BOOKKEEPING),
    })


T = TypeVar("T")


def _ready(value: T | None, what: str) -> T:
    """A value an earlier step produces, typed, or a clear error naming it (not an AttributeError on
    None) when steps run out of order. The ``RunContext`` properties below are how steps read them."""
    if value is None:
        raise RuntimeError(f"pipeline order broken: {what} is not prepared yet")
    return value


@dataclass
class PreparedData:
    train: list[Example]
    validation: list[Example]
    stats: dict[str, Any]


@dataclass
class TrainingPlan:
    args: Any  # transformers.TrainingArguments
    train_rows: list[dict[str, list[int]]]
    eval_rows: list[dict[str, list[int]]]
    collator: Any


@dataclass
class RunContext:
    spec: LoraTrainingJobSpec
    output_dir: Path
    emit: Callable[[TrainerEvent], None]
    signals: StopSignals = field(default_factory=StopSignals)  # installed by the CLI; inert otherwise
    world: World = field(default_factory=World)  # this worker of a data-parallel run; rank 0 of 1 otherwise
    strategy: Strategy = field(default_factory=lambda: Strategy("single", "one process"))  # ``sharding``
    tokenizer: Any = None
    data: PreparedData | None = None
    loaded: LoadedModel | None = None  # the base model of step 0, until saving frees it
    quantized: bool = False  # whether that base model was loaded k-bit
    model: Any = None  # the PeftModel being trained, until saving frees it
    grader: Grader | None = None
    judge_fallback: str | None = None  # once the LLM judge is given up: what the step messages say about it
    items: list[EvalItem] = field(default_factory=list)
    before: GradeScores | None = None
    plan: TrainingPlan | None = None
    probe: tuple[torch.Tensor, torch.Tensor] | None = None  # (input ids, logits of the trained model) for step 6
    artifacts: Artifacts = field(default_factory=Artifacts)
    eval_model: Any = None  # the reloaded trained model graded in steps 6-8
    validation_loss: tuple[float | None, float | None] = (None, None)
    after: GradeScores | None = None
    stores: list[Store] = field(default_factory=list)  # output.destinations, opened in step 3

    @property
    def buckets(self) -> list[S3Store]:
        """The s3:// destinations: they get the whole results, registries the adapter only."""
        return [s for s in self.stores if isinstance(s, S3Store)]

    @property
    def checkpoint_mirror(self) -> CheckpointMirror | None:
        """The first s3:// destination's copy of ``checkpoints/`` (docs/artifacts.md), if there is one."""
        return CheckpointMirror(self.buckets[0], self.layout.checkpoints) if self.buckets else None

    @property
    def dataset(self) -> PreparedData:
        return _ready(self.data, "the prepared dataset (step 1)")

    @property
    def base_model(self) -> LoadedModel:
        return _ready(self.loaded, "the base model (step 0)")

    @property
    def lora_model(self) -> Any:
        return _ready(self.model, "the LoRA model (step 2)")

    @property
    def training_plan(self) -> TrainingPlan:
        return _ready(self.plan, "the training plan (step 3)")

    @property
    def grader_in_use(self) -> Grader:
        return _ready(self.grader, "the grader (step 0)")

    @property
    def grader_type(self) -> GraderType:
        """The kind of ``grader``: the spec's, unless the LLM judge was given up (``fall_back_to_builtin``)."""
        return "builtin" if self.judge_fallback else self.spec.evaluation.grader.type

    def fall_back_to_builtin(self, why: str) -> None:
        """The builtin grader grades from now on, in place of an LLM judge that failed (``why``); whoever
        calls this also sees that both evaluations are graded by it (docs/grading.md, the fallback rule)."""
        self.grader = BuiltinGrader()
        self.judge_fallback = f"graded by the builtin grader, before and after alike: {why}"

    @property
    def saved_probe(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _ready(self.probe, "the saved model's probe (step 5)")

    @property
    def trained_model(self) -> Any:
        return _ready(self.eval_model, "the reloaded trained model (step 6)")

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.output_dir)

    @property
    def fingerprint(self) -> str:
        return training_fingerprint(self.spec)

    @property
    def evaluation_placement(self) -> Placement:
        """Where rank 0 loads the models it grades: on its GPU, or over all of its node's GPUs when the model
        is sharded for training because it does not fit one."""
        return "spread" if self.strategy.sharded else "device"

    @property
    def dtype(self) -> Any:
        """The training precision on this machine, which models are loaded in (``profiles``)."""
        return for_this_machine(self.spec.lora).dtype

    def note(self, step: str, message: str) -> None:
        """News from inside the running step ``step`` (its name in PIPELINE_STEPS)."""
        self.emit(NoteEvent(index=PIPELINE_STEPS.index(step), message=message))
