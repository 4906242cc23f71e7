"""A trainer killed mid-training continues from its newest complete checkpoint when run again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from lora_contract.progress import StepEvent, TrainEvent, parse_event
from lora_trainer.checkpoints import MARKER
from lora_trainer.cli import main
from tests.trainer.conftest import tiny_spec_dict

TOTAL_STEPS = 400


def _complete_checkpoints(output: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in (output / "checkpoints").glob(f"checkpoint-*/{MARKER}"))


def test_a_killed_run_resumes_from_its_checkpoint(tiny_model: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec_dict(
        tiny_model, lora={"maxSteps": TOTAL_STEPS, "saveSteps": 25, "evalSteps": 1000, "loggingSteps": 5},
        evaluation={"heldOutItems": 1, "queries": []},
    )))
    output, events = tmp_path / "out", tmp_path / "events.jsonl"
    command = [sys.executable, "-m", "lora_trainer.cli", "run", str(spec), "--output", str(output),
               "--events", str(events), "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not _complete_checkpoints(output) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # like a node dying: no cleanup, no final events
    finally:
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    saved = _complete_checkpoints(output)
    assert saved and saved[-1] < TOTAL_STEPS, f"killed too late: {saved}"
    first_run = [parse_event(line) for line in events.read_text().splitlines()]
    assert not any(isinstance(e, StepEvent) and e.index == 4 and e.state == "Completed" for e in first_run)

    assert main(["run", str(spec), "--output", str(output), "--events", str(events), "--quiet"]) == 0
    second_run = [parse_event(line) for line in events.read_text().splitlines()][len(first_run):]
    train = [e for e in second_run if isinstance(e, TrainEvent)]
    assert train[0].step == saved[-1] + 5 and train[-1].step == TOTAL_STEPS  # continued, not restarted
    messages = {e.index: e.message for e in second_run if isinstance(e, StepEvent) and e.state == "Completed"}
    assert f"resumed from checkpoint-{saved[-1]}" in messages[4]
    assert "reused from a previous attempt" in messages[0]
    assert json.loads((output / "report.json").read_text())["trainer"]["trainingStep"] == TOTAL_STEPS
