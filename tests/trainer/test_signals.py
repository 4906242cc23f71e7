"""SIGTERM (a pod deleted, a node drained, a preemption) wherever it lands: in training the trainer saves a
checkpoint at the end of the optimizer step in progress and exits 143, and a rerun resumes from exactly that
step; elsewhere it stops at once with 143 and says where; a save cut short is never marked complete.

Each case runs ``lora-trainer run`` in a subprocess whose code is patched to send the process SIGTERM at one
chosen point (the handler then runs right there), so the signal lands where the case says, however fast
the tiny model trains: no race with a timer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lora_contract.progress import StepEvent, StopEvent, TrainEvent, parse_event
from lora_contract.wire import EXIT_INTERRUPTED
from lora_trainer.checkpoints import MARKER
from lora_trainer.cli import main
from tests.trainer.conftest import tiny_spec_dict

# Runs the CLI after ``PATCH`` (argv[1]) has wrapped some function with ``stop_here()``.
DRIVER = """
import os, signal, sys
def stop_here():
    os.kill(os.getpid(), signal.SIGTERM)
exec(sys.argv[1])
from lora_trainer.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _wrap(target: str, name: str, when: str = "True", after: bool = False) -> str:
    """Patch code: ``target.name`` sends SIGTERM (when ``when``, over args/kwargs) before (or after) it runs."""
    module, _, owner = target.partition(":")
    holder = f"{module.rsplit('.', 1)[-1]}_mod" + (f".{owner}" if owner else "")
    call = "result = original(*args, **kwargs)"
    return "\n".join([
        f"import {module} as {module.rsplit('.', 1)[-1]}_mod",
        f"original_{name} = {holder}.{name}",
        f"def hooked_{name}(*args, original=original_{name}, **kwargs):",
        f"    {call}" if after else "    pass",
        f"    if {when}: stop_here()",
        "    return result" if after else "    return original(*args, **kwargs)",
        f"{holder}.{name} = hooked_{name}",
    ])


def _spec(tmp_path: Path, tiny_model: Path, **lora: Any) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec_dict(
        tiny_model, lora={"maxSteps": 8, "saveSteps": 5, "evalSteps": 5, "loggingSteps": 1, **lora},
        evaluation={"heldOutItems": 2})))
    return spec


def _stopped(tmp_path: Path, spec: Path, patch: str) -> tuple[Path, list[Any], dict[str, Any]]:
    """Run with ``patch``; assert it stopped as a signal stops it; return the output, events and status."""
    output, events = tmp_path / "out", tmp_path / "events.jsonl"
    proc = subprocess.run([sys.executable, "-c", DRIVER, patch, "run", str(spec), "--output", str(output),
                           "--events", str(events), "--quiet"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == EXIT_INTERRUPTED, proc.stderr[-3000:]
    parsed = [parse_event(line) for line in events.read_text().splitlines()]
    report = json.loads((output / "report.json").read_text())
    assert report["exitCode"] == EXIT_INTERRUPTED and report["xp"] is None
    status = report["trainer"]
    assert not [s for s in status["steps"] if s["state"] == "Failed"], status["steps"]
    assert isinstance(parsed[-1], StopEvent) and parsed[-1].message == status["message"], parsed[-1]
    stopped = status["steps"][parsed[-1].index]
    assert stopped["state"] == "Active" and stopped["message"] == status["message"]
    return output, parsed, status


def _checkpoints(output: Path) -> dict[int, bool]:
    """Every checkpoint folder: whether it carries the completion marker."""
    return {int(p.name.split("-")[1]): (p / MARKER).is_file() for p in (output / "checkpoints").glob("checkpoint-*")}


def _resumed(spec: Path, output: Path, events: Path) -> list[Any]:
    """Run again in-process, as the Job's retry does; its events."""
    before = len(events.read_text().splitlines())
    assert main(["run", str(spec), "--output", str(output), "--events", str(events), "--quiet"]) == 0
    return [parse_event(line) for line in events.read_text().splitlines()[before:]]


def _training_message(events: list[Any]) -> str:
    return next(e.message for e in events if isinstance(e, StepEvent) and e.index == 4 and e.state == "Completed")


@pytest.mark.parametrize("when", ["in the middle of an optimizer step", "during an evaluation"])
def test_sigterm_in_training_saves_that_step_and_the_rerun_resumes_there(tiny_model: Path, tmp_path: Path,
                                                                         when: str) -> None:
    """During step 4's forward and backward pass, or during the evaluation after step 3: a checkpoint of the
    last finished optimizer step (not a saveSteps multiple), no step that ran is lost, and the exit (143)
    tells the Job it was a disruption, not a failure."""
    if when == "during an evaluation":
        spec = _spec(tmp_path, tiny_model, evalSteps=3)
        patch = _wrap("transformers.trainer:Trainer", "evaluate", when="args[0].state.global_step == 3")
        expected = 3
    else:
        spec = _spec(tmp_path, tiny_model)
        patch = _wrap("transformers.trainer:Trainer", "training_step", when="args[0].state.global_step == 3")
        expected = 4
    output, events, status = _stopped(tmp_path, spec, patch)
    assert status["message"] == (f"stopped by SIGTERM after optimizer step {expected}/8: saved "
                                 f"checkpoint-{expected}; a retry resumes from it")
    assert max(e.step for e in events if isinstance(e, TrainEvent)) == expected
    assert _checkpoints(output) == {expected: True}
    again = _resumed(spec, output, tmp_path / "events.jsonl")
    steps = [e.step for e in again if isinstance(e, TrainEvent)]
    assert steps[0] == expected + 1 and steps[-1] == 8, steps  # steps lost: 0
    assert f"resumed from checkpoint-{expected}" in _training_message(again)


def test_sigterm_while_a_checkpoint_is_saved_finishes_that_save(tiny_model: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path, tiny_model)
    output, _, status = _stopped(tmp_path, spec, _wrap("transformers.trainer:Trainer", "_save_checkpoint"))
    assert "saved checkpoint-5;" in status["message"]
    assert _checkpoints(output) == {5: True}


def test_a_second_sigterm_mid_save_stops_at_once_and_leaves_that_checkpoint_unmarked(tiny_model: Path,
                                                                                  tmp_path: Path) -> None:
    spec = _spec(tmp_path, tiny_model, saveSteps=2, evalSteps=2)
    patch = "\n".join([
        _wrap("transformers.trainer:Trainer", "_save_checkpoint", when="args[0].state.global_step == 4"),
        _wrap("transformers.trainer:Trainer", "_save_rng_state", when="args[0].state.global_step == 4"),
    ])
    output, _, status = _stopped(tmp_path, spec, patch)
    assert status["message"].startswith("stopped by SIGTERM in step 4 training;"), status["message"]
    assert _checkpoints(output) == {2: True, 4: False}  # checkpoint-4 was cut short: no marker
    again = _resumed(spec, output, tmp_path / "events.jsonl")
    assert "resumed from checkpoint-2" in _training_message(again)


def test_sigterm_while_loading_the_model_stops_at_once(tiny_model: Path, tmp_path: Path) -> None:
    output, events, status = _stopped(tmp_path, _spec(tmp_path, tiny_model),
                                      _wrap("lora_trainer.steps.before_metrics", "load_model"))
    assert status["message"] == ("stopped by SIGTERM in step 0 before-metrics; a retry runs this step again "
                                 "(training resumes from the newest complete checkpoint)")
    assert not (output / "checkpoints").exists() and not any(isinstance(e, TrainEvent) for e in events)


def test_sigterm_while_grading_stops_at_once_and_the_rerun_does_not_train_again(tiny_model: Path,
                                                                               tmp_path: Path) -> None:
    spec = _spec(tmp_path, tiny_model)
    output, _, status = _stopped(tmp_path, spec, _wrap("lora_trainer.steps.after_metrics", "measure"))
    assert status["message"].startswith("stopped by SIGTERM in step 8 after-metrics;"), status["message"]
    assert status["steps"][7]["state"] == "Completed" and (output / "manifest.json").is_file()
    again = _resumed(spec, output, tmp_path / "events.jsonl")
    assert not any(isinstance(e, TrainEvent) for e in again)  # the final checkpoint holds all 8 steps
    assert "resumed from checkpoint-8" in _training_message(again)


def test_sigterm_while_saving_the_adapter_leaves_no_adapter_and_no_manifest(tiny_model: Path,
                                                                             tmp_path: Path) -> None:
    """The adapter's weights are written, its tokenizer not yet: only adapter.partial/ exists, which nothing
    reports or serves; the rerun saves it again."""
    spec = _spec(tmp_path, tiny_model)
    patch = _wrap("peft:PeftModel", "save_pretrained", when="'adapter.partial' in str(args[1])", after=True)
    output, _, status = _stopped(tmp_path, spec, patch)
    assert status["message"].startswith("stopped by SIGTERM in step 5 saving;"), status["message"]
    partial = output / "adapter.partial"
    assert (partial / "adapter_model.safetensors").is_file() and not (partial / "tokenizer_config.json").exists()
    assert not (output / "adapter").exists() and not (output / "manifest.json").exists()
    assert "artifacts" not in status or not status["artifacts"].get("adapter")
    _resumed(spec, output, tmp_path / "events.jsonl")
    assert (output / "adapter" / "tokenizer_config.json").is_file() and not partial.exists()
