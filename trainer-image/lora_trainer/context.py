"""What the pipeline steps hand to each other during one run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_contract.api import PIPELINE_STEPS, Artifacts, GradeScores, LoraTrainingJobSpec
from lora_contract.progress import NoteEvent, TrainerEvent
from lora_trainer.evaluation import EvalItem
from lora_trainer.formats import Example
from lora_trainer.grader import Grader
from lora_trainer.layout import OutputLayout
from lora_trainer.modeling import LoadedModel
from lora_trainer.profiles import for_this_machine

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
    tokenizer: Any = None
    data: PreparedData | None = None
    loaded: LoadedModel | None = None  # the base model of step 0, until saving frees it
    quantized: bool = False  # whether that base model was loaded k-bit
    model: Any = None  # the PeftModel being trained, until saving frees it
    grader: Grader | None = None
    items: list[EvalItem] = field(default_factory=list)
    before: GradeScores | None = None
    plan: TrainingPlan | None = None
    probe: tuple[Any, Any] | None = None  # (input ids, logits of the trained model) for step 6
    artifacts: Artifacts = field(default_factory=Artifacts)
    eval_model: Any = None  # the reloaded trained model graded in steps 6-8
    validation_loss: tuple[float | None, float | None] = (None, None)
    after: GradeScores | None = None

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.output_dir)

    @property
    def fingerprint(self) -> str:
        return training_fingerprint(self.spec)

    @property
    def dtype(self) -> Any:
        """The training precision on this machine, which models are loaded in (``profiles``)."""
        return for_this_machine(self.spec.lora).dtype

    def note(self, step: str, message: str) -> None:
        """News from inside the running step ``step`` (its name in PIPELINE_STEPS)."""
        self.emit(NoteEvent(index=PIPELINE_STEPS.index(step), message=message))

    def need(self, name: str) -> Any:
        """A value an earlier step produces; a clear error instead of an AttributeError on None."""
        value = getattr(self, name)
        if value is None:
            raise RuntimeError(f"pipeline order broken: {name} is not prepared yet")
        return value
