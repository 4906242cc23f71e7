"""What every fault test shares: the table's record, holding the trainer at its first checkpoint, and the final
checks."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import yaml

from lora_trainer.checkpoints import MARKER
from lora_trainer.layout import sha256
from tests.conftest import Kubectl, held_trainer, run_until, trainer_running, wait_for

# Where the suite writes its rows (``python -m tests.faults`` sets it and renders them).
RECORD_ENV = "LORA_FAULTS_RECORD"


@dataclass(frozen=True)
class Row:
    order: float  # the priority order, then the test's own
    fault: str
    expected: str
    observed: str
    converge_s: float  # from the end of the fault (or the injection, for a one-shot fault) to the final phase


class FaultLog:
    """The rows of docs/faults.md, rewritten after each test so a failing test keeps what the others saw."""

    def __init__(self, path: Path) -> None:
        self.path, self.rows = path, []

    def record(self, row: Row) -> None:
        self.rows.append(row)
        self.path.write_text(json.dumps([asdict(r) for r in sorted(self.rows, key=lambda r: r.order)], indent=2))


@pytest.fixture(scope="session")
def fault_log(tmp_path_factory: pytest.TempPathFactory) -> FaultLog:
    return FaultLog(Path(os.environ.get(RECORD_ENV) or tmp_path_factory.getbasetemp() / "faults.json"))


def output_dir(kubectl: Kubectl, namespace: str, name: str) -> Path:
    """The run's folder on the "artifacts" volume, as the host sees it (both test nodes use hostPath PVs)."""
    return kubectl.bound_dir(namespace, "artifacts") / namespace / name


def complete_checkpoints(out: Path) -> list[int]:
    """Steps of the checkpoints the trainer finished writing (their marker exists): what a retry resumes."""
    found = (out / "checkpoints").glob("checkpoint-*")
    return sorted(int(p.name.removeprefix("checkpoint-")) for p in found if (p / MARKER).exists())


def first_checkpoint(kubectl: Kubectl, namespace: str, name: str) -> Path:
    """Wait until training is under way and a retry would have something to resume: the first checkpoint
    is complete (watched on the volume, not in the status, which trails the trainer by a report interval).
    Returns the run's output folder."""
    out = output_dir(kubectl, namespace, name)
    wait_for("the trainer pod", lambda: trainer_running(kubectl, namespace, name), timeout=180)
    wait_for("the first checkpoint", lambda: complete_checkpoints(out), timeout=180, interval=0.02)
    return out


@contextmanager
def held_at_first_checkpoint(kubectl: Kubectl, namespace: str, name: str) -> Iterator[tuple[Path, int]]:
    """``first_checkpoint`` with the trainer held (SIGSTOP) from its start and kept stopped there inside the
    block: for a test whose fault must land mid-run, which a trainer running free between the checkpoint and
    the freeze need not be. Yields the run's output folder and the trainer's process group id."""
    out = output_dir(kubectl, namespace, name)
    with held_trainer(kubectl, namespace, name) as pgid:
        run_until(pgid, lambda: complete_checkpoints(out), slice_s=0.05)
        yield out, pgid


def terminal(kubectl: Kubectl, namespace: str, name: str, timeout: float = 300) -> tuple[dict, float]:
    """The run's status once its phase is final, and when it got there (time.monotonic)."""
    status = wait_for(f"{name} to reach a final phase", lambda: (s := kubectl.status(namespace, name)).get(
        "phase") in ("Succeeded", "Failed") and s, timeout=timeout, interval=0.2)
    return status, time.monotonic()


def ready_reason(status: dict) -> str:
    return next(c["reason"] for c in status["conditions"] if c["type"] == "Ready")


def event_counts(kubectl: Kubectl, namespace: str, name: str, last: str) -> Counter[str]:
    """How often each reason was posted on the run, once the Event ``last`` is there (Kopf posts Events from
    a queue of its own); repeats of one Event object count too."""
    kubectl.events(namespace, name, last)
    items = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json", "--field-selector",
                               f"involvedObject.name={name},involvedObject.kind=LoraTrainingJob"))["items"]
    counts: Counter[str] = Counter()
    for event in items:
        counts[event["reason"]] += event.get("count") or 1
    return counts


def assert_once(events: Counter[str], *reasons: str) -> None:
    """The Events a user and tools act on were posted exactly once, however often the operator restarted."""
    assert {r: events[r] for r in reasons} == dict.fromkeys(reasons, 1), events


def children(kubectl: Kubectl, namespace: str, name: str) -> tuple[int, int]:
    """How many Jobs and trainer pods the run has."""
    jobs = yaml.safe_load(kubectl("get", "jobs", "-n", namespace, "-o", "yaml"))["items"]
    pods = yaml.safe_load(kubectl("get", "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={name}-train",
                                  "-o", "yaml"))["items"]
    return len(jobs), len(pods)


def verified_artifacts(out: Path, status: dict) -> str:
    """Nothing on the output volume that the status names is lost or half-written: manifest.json lists every
    file of adapter/ and merged/ (no leftover of a killed attempt beside them), each with the size and
    SHA-256 it has, and report.json is whole. A run that reports no artifact must not have a manifest that
    would pass a half-saved adapter off as one. Returns what was checked, for the table."""
    artifacts = (status.get("trainer") or {}).get("artifacts") or {}
    checkpoints = complete_checkpoints(out)
    if not artifacts.get("adapter"):
        assert not (out / "manifest.json").exists(), "a manifest without a reported artifact"
        return f"no artifact reported, {len(checkpoints)} complete checkpoints kept"
    listed = {f["path"]: f for f in json.loads((out / "manifest.json").read_text())["files"]}
    on_disk = {str(p.relative_to(out)) for folder in ("adapter", "merged") for p in (out / folder).rglob("*")
               if p.is_file()}
    assert on_disk == set(listed), (on_disk ^ set(listed))
    leftovers = sorted(p.name for p in out.glob("*.partial"))
    assert not leftovers, f"a killed attempt's unfinished writes outlived the run: {leftovers}"
    bad = [path for path, f in listed.items()
           if (out / path).stat().st_size != f["bytes"] or sha256(out / path) != f["sha256"]]
    assert not bad, bad
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= set(listed)
    json.loads((out / "report.json").read_text())
    return f"{len(listed)} adapter/merged files match manifest.json (size, SHA-256)"


def outcome(kubectl: Kubectl, namespace: str, name: str, status: dict, events: Counter[str]) -> str:
    """The observed column: final phase and reason, children, the Events posted, the artifacts."""
    jobs, pods = children(kubectl, namespace, name)
    posted = ", ".join(f"{r} {n}" for r, n in sorted(events.items()))
    training = next((s.get("message") or "" for s in (status.get("trainer") or {}).get("steps", [])
                     if s["name"] == "training"), "")
    resumed = "; resumed" + training.split("resumed", 1)[1].split(";")[0] if "resumed" in training else ""
    return (f"{status['phase']} ({ready_reason(status)}), {jobs} Job, {pods} pod(s){resumed}; Events: {posted}; "
            f"{verified_artifacts(output_dir(kubectl, namespace, name), status)}")
