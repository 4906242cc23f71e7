"""Out of GPU memory in training: smaller micro-batches, then activation checkpointing, then a clear failure.

No GPU exists here, so one part is simulated: the allocator. The Trainer's loss computation raises
``torch.OutOfMemoryError`` (what CUDA's caching allocator raises) for training micro-batches larger
than a budget. Everything else is real: the tiny Llama with peft, the HF Trainer, checkpoints, resume.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lora_contract.progress import NoteEvent, TrainEvent
from lora_trainer.loss import LabelledLogitsTrainer
from lora_trainer.memory_ladder import is_out_of_memory, use_less_memory
from lora_trainer.steps import training
from tests.trainer.conftest import tiny_spec
from tests.trainer.test_pipeline import run

TRAINING = 4


def _gpu_fitting(monkeypatch: pytest.MonkeyPatch, items: int, after: int = 0) -> None:
    """From the ``after``-th training micro-batch on, only micro-batches of at most ``items`` fit."""
    fitted = 0

    class SmallGpuTrainer(LabelledLogitsTrainer):
        def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            nonlocal fitted
            if model.training:
                # A packed micro-batch is one row; its items start where the position ids restart.
                size = int((inputs["position_ids"] == 0).sum()) if "position_ids" in inputs else \
                    inputs["input_ids"].shape[0]
                if fitted >= after and size > items:
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
                fitted += 1
            return super().compute_loss(model, inputs, *args, **kwargs)

    monkeypatch.setattr(training, "LabelledLogitsTrainer", SmallGpuTrainer)


def _notes(recorder: Any) -> list[str]:
    """The training step's notes while it runs (the out-of-memory ones)."""
    return [e.message for e in recorder.events if isinstance(e, NoteEvent) and e.index == TRAINING]


def test_the_ladder_keeps_the_items_per_step_and_ends() -> None:
    args = SimpleNamespace(per_device_train_batch_size=4, per_device_eval_batch_size=4,
                           gradient_accumulation_steps=1, activation_checkpointing=False)
    changes = []
    while (change := use_less_memory(args)) is not None:
        changes.append(change)
    assert changes == ["batch 4 x accumulation 1 -> batch 2 x accumulation 2",
                       "batch 2 x accumulation 2 -> batch 1 x accumulation 4", "activation checkpointing on"]
    odd = SimpleNamespace(per_device_train_batch_size=5, per_device_eval_batch_size=5,
                          gradient_accumulation_steps=3, activation_checkpointing=True)
    assert use_less_memory(odd) == "batch 5 x accumulation 3 -> batch 2 x accumulation 8"  # 16 >= 15 items
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory")) and not is_out_of_memory(RuntimeError("nan"))


def test_out_of_memory_before_any_checkpoint_restarts_from_the_initial_weights(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _gpu_fitting(monkeypatch, items=1, after=1)  # the first step fits, then only one item at a time
    # No warmup: the first step's learning rate is not 0, so that step really moves the weights.
    result = run(tiny_spec(tiny_model, lora={"saveSteps": 100, "warmupSteps": 0}), tmp_path)
    assert result.result.exit_code == 0, result.status.message
    assert _notes(result.recorder) == [
        "out of GPU memory: batch 4 x accumulation 1 -> batch 2 x accumulation 2; continuing from the start",
        "out of GPU memory: batch 2 x accumulation 2 -> batch 1 x accumulation 4; continuing from the start",
    ]
    steps = [e for e in result.recorder.events if isinstance(e, TrainEvent)]
    assert [e.step for e in steps] == [1, 1, 2, 3, 4]  # step 1 done at batch 4, then all again at batch 1
    # Same first items, same starting weights: the same first loss (the failed attempt's update was undone).
    assert steps[1].loss == pytest.approx(steps[0].loss, rel=1e-4)
    message = result.recorder.message(TRAINING)
    assert message.startswith("4 optimizer steps")
    assert "out of GPU memory, adjusted: batch 4 x accumulation 1" in message
    assert [p.step for p in result.status.loss_history] == [1, 2, 3, 4]


def test_out_of_memory_after_a_checkpoint_resumes_from_it(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _gpu_fitting(monkeypatch, items=2, after=2)
    result = run(tiny_spec(tiny_model, lora={"saveSteps": 2}), tmp_path)
    assert result.result.exit_code == 0, result.status.message
    assert _notes(result.recorder) == [
        "out of GPU memory: batch 4 x accumulation 1 -> batch 2 x accumulation 2; continuing from checkpoint-2"]
    assert [e.step for e in result.recorder.events if isinstance(e, TrainEvent)] == [1, 2, 3, 4]
    assert "resumed from checkpoint-2" in result.recorder.message(TRAINING)
    assert result.status.steps[TRAINING].state == "Completed"


def test_out_of_memory_at_the_smallest_setting_fails_with_what_to_change(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _gpu_fitting(monkeypatch, items=0)
    result = run(tiny_spec(tiny_model), tmp_path)
    assert result.result.exit_code == 1
    assert result.status.steps[TRAINING].state == "Failed"
    assert len(_notes(result.recorder)) == 3
    message = result.status.message or ""
    assert "out of GPU memory even at batch 1 with activation checkpointing" in message
    assert "model.quantization: 4bit" in message
