"""Fault 3: the trainer pod deleted mid-training, and killed inside the save step. The Job's retry resumes
from the newest complete checkpoint, and no half-written adapter is ever reported as an artifact."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import assert_succeeded_with_results, frozen_trainer, pvc, tiny_run, trainer_pid
from tests.faults.conftest import (
    Row,
    assert_once,
    children,
    complete_checkpoints,
    event_counts,
    first_checkpoint,
    outcome,
    run_until,
    terminal,
)

pytestmark = pytest.mark.integration


def _training_message(status: dict) -> str:
    return next(s.get("message") or "" for s in status["trainer"]["steps"] if s["name"] == "training")


def test_trainer_pod_deleted_mid_training(kubectl, operator, namespace, tiny_model_pvc, test_node, fault_log):
    name = "evicted"
    kubectl.apply(pvc("artifacts"), namespace)
    kubectl.apply(tiny_run(name, tiny_model_pvc), namespace)
    out = first_checkpoint(kubectl, namespace, name)
    with frozen_trainer(kubectl, namespace, name):
        newest = complete_checkpoints(out)[-1]
        pod = kubectl("get", "pods", "-n", namespace, "-o", "name", "-l", f"batch.kubernetes.io/job-name={name}-train")
        kubectl("delete", pod.strip(), "-n", namespace, "--grace-period=1", "--wait=false")
    injected = time.monotonic()
    status, done = terminal(kubectl, namespace, name)
    assert_succeeded_with_results(status, namespace, name)
    assert f"resumed from checkpoint-{newest}" in _training_message(status), _training_message(status)
    assert children(kubectl, namespace, name) == (1, 1)  # the deleted pod is gone, its replacement finished
    events = event_counts(kubectl, namespace, name, "Awarded")
    assert_once(events, "JobCreated", "Succeeded", "Awarded")
    fault_log.record(Row(3, "the trainer pod deleted mid-training (kubectl delete pod)",
                         f"the Job's retry resumes from the newest complete checkpoint (here {newest}); Succeeded",
                         outcome(kubectl, namespace, name, status, events), round(done - injected, 1)))


def test_trainer_killed_inside_the_save_step(kubectl, operator, namespace, tiny_model_pvc, test_node, fault_log):
    """SIGKILL (an OOM kill, a node crash) while step 5 writes the adapter: it goes to adapter.partial/ and is
    renamed adapter/ only when complete, so the killed attempt leaves nothing that looks finished."""
    name = "halfsaved"
    kubectl.apply(pvc("artifacts"), namespace)
    kubectl.apply(tiny_run(name, tiny_model_pvc), namespace)
    out = first_checkpoint(kubectl, namespace, name)
    pgid = trainer_pid(kubectl, namespace, name)
    os.killpg(pgid, signal.SIGSTOP)
    last = tiny_run(name, tiny_model_pvc)["spec"]["lora"]["maxSteps"]
    run_until(pgid, lambda: last - 40 in complete_checkpoints(out), slice_s=0.05)
    # From here in 2 ms slices, so the kill lands while the adapter is being written (far longer than a slice).
    staging = out / "adapter.partial"
    run_until(pgid, lambda: staging.is_dir() and any(staging.iterdir()), slice_s=0.002)
    assert not (out / "adapter").exists() and not (out / "manifest.json").exists(), "the adapter was already saved"
    written = sorted(p.name for p in staging.iterdir())
    os.killpg(pgid, signal.SIGKILL)
    injected = time.monotonic()
    status, done = terminal(kubectl, namespace, name)
    assert_succeeded_with_results(status, namespace, name)
    assert f"resumed from checkpoint-{last}" in _training_message(status), _training_message(status)
    assert children(kubectl, namespace, name) == (1, 2)  # the killed pod (Failed) and the retry
    events = event_counts(kubectl, namespace, name, "Awarded")
    assert_once(events, "JobCreated", "Succeeded", "Awarded")
    fault_log.record(Row(3.1, f"the trainer SIGKILLed while saving the adapter (adapter.partial/ held {written}, "
                              "no adapter/ or manifest yet)",
                         "the retry resumes from the last checkpoint and saves again; only whole artifacts reported",
                         outcome(kubectl, namespace, name, status, events), round(done - injected, 1)))
