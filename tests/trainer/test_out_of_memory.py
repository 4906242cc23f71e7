"""Out of GPU memory in training: smaller micro-batches, then activation checkpointing, then a clear failure.

No GPU exists here, so one part is simulated: the allocator. The Trainer's loss computation raises
``torch.OutOfMemoryError`` (what CUDA's caching allocator raises) for training micro-batches larger
than a budget. Everything else is real: the tiny Llama with peft, the HF Trainer, checkpoints, resume.
In a data-parallel run the simulation reaches the chosen worker through a ``sitecustomize`` module on
its PYTHONPATH, which Python imports at startup in every process (the launcher and its workers).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lora_contract.progress import NoteEvent, TrainEvent
from lora_contract.wire import EXIT_FAILED, EXIT_OK
from lora_trainer.loss import LabelledLogitsTrainer
from lora_trainer.memory_ladder import PLAN_FILE, apply_plan, is_out_of_memory, load_plan, save_plan, use_less_memory
from lora_trainer.steps import training
from tests.trainer.conftest import tiny_spec, tiny_spec_dict
from tests.trainer.test_distributed import _events, _finish, _run, with_sitecustomize
from tests.trainer.test_pipeline import run

TRAINING = 4

# Imported at startup by every process of a data-parallel run (the launcher and its workers): in the worker
# of rank $OOM_RANK, the simulated allocator.
SITECUSTOMIZE = """
import os
if os.environ.get("RANK") == os.environ["OOM_RANK"]:
    from lora_trainer.steps import training
    from tests.trainer.test_out_of_memory import small_gpu_trainer
    training.LabelledLogitsTrainer = small_gpu_trainer(int(os.environ["OOM_ITEMS"]), int(os.environ["OOM_AFTER"]))
"""


def _gpu_fitting(monkeypatch: pytest.MonkeyPatch, items: int, after: int = 0) -> None:
    monkeypatch.setattr(training, "LabelledLogitsTrainer", small_gpu_trainer(items, after))


def small_gpu_trainer(items: int, after: int = 0) -> type[LabelledLogitsTrainer]:
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

    return SmallGpuTrainer


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


def _settings(batch: int, accumulation: int, checkpointing: bool = False) -> SimpleNamespace:
    return SimpleNamespace(per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
                           gradient_accumulation_steps=accumulation, activation_checkpointing=checkpointing)


def test_a_groups_plan_round_trips_for_its_spec_only_and_keeps_the_items_per_step(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"  # not there yet: out of memory before the first checkpoint
    lower = _settings(4, 2)  # a worker's share of a global batch of 16 over 2 workers
    change = use_less_memory(lower)
    save_plan(folder, "ours", lower, [change], "out of GPU memory on worker rank 1: ...", rank=1)
    assert [p.name for p in folder.iterdir()] == [PLAN_FILE]  # the temporary file was renamed
    assert load_plan(folder, "another spec") is None
    plan = load_plan(folder, "ours")
    assert plan is not None and plan["message"] == "out of GPU memory on worker rank 1: ..."
    same = _settings(4, 2)  # the retry with 2 workers again
    assert apply_plan(same, plan) == ["batch 4 x accumulation 2 -> batch 2 x accumulation 4"]
    assert vars(same) == vars(lower)
    shrunk = _settings(8, 2)  # the retry in one process: the whole global batch of 16
    apply_plan(shrunk, plan)
    assert vars(shrunk) == vars(_settings(2, 8))
    grown = _settings(1, 8, checkpointing=True)  # already smaller: the plan never makes a micro-batch larger
    apply_plan(grown, plan)
    assert vars(grown) == vars(_settings(1, 8, checkpointing=True))
    (folder / PLAN_FILE).write_text('{"fingerprint": "ours", "per_device')  # cut short: no plan
    assert load_plan(folder, "ours") is None


def test_out_of_memory_in_one_worker_stops_the_group_and_its_retry_uses_smaller_batches(
    tiny_model: Path, tmp_path: Path
) -> None:
    """2 workers over gloo, global batch 4 (2 x 1 each). Rank 1 fits micro-batches of 1 item only from its 4th on
    (step 4): the group fails with exit code 1, leaving the plan; its retry in the same folder resumes from
    checkpoint-2 at batch 1 x accumulation 2 each and trains the same 6 optimizer steps."""
    env = {**with_sitecustomize(tmp_path, SITECUSTOMIZE),
           "TQDM_DISABLE": "1", "OOM_RANK": "1", "OOM_ITEMS": "1", "OOM_AFTER": "3"}
    spec = tiny_spec_dict(tiny_model, lora={"maxSteps": 6, "saveSteps": 2, "evalSteps": 2})
    output = tmp_path / "run"
    code, err = _finish(_run(spec, output, 2, env=env), 300)
    expected = ("out of GPU memory on worker rank 1: the group stops; its retry resumes from checkpoint-2 "
                "with batch 1 x accumulation 2")
    assert code == EXIT_FAILED, err[-3000:]
    assert expected in err
    report = json.loads((output / "report.json").read_text())  # rank 0's, whose collective broke
    assert report["exitCode"] == EXIT_FAILED, report
    assert report["trainer"]["message"] == f"step 4 training failed: {expected}"
    plan = json.loads((output / "checkpoints" / PLAN_FILE).read_text())
    assert (plan["per_device_train_batch_size"], plan["gradient_accumulation_steps"]) == (1, 2)

    code, err = _finish(_run(spec, output, 2, env=env), 300)
    assert code == EXIT_OK, err[-3000:]
    message = [e["message"] for e in _events(output) if e.get("type") == "step" and e["index"] == TRAINING
               and e["state"] == "Completed"][-1]
    assert message.startswith("6 optimizer steps"), message
    assert ("resumed from checkpoint-2; out of GPU memory, adjusted: batch 2 x accumulation 1 -> "
            "batch 1 x accumulation 2") in message
