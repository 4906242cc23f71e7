"""Fault 2: kube-apiserver, or etcd under it (its data kept), restarted while the trainer trains. The trainer
trains on and reports during the outage; the operator's watches and status writes fail and must recover."""

from __future__ import annotations

import time

import pytest

from tests.conftest import StatusRecorder, assert_succeeded_with_results, frozen_trainer, pvc, run_until, tiny_run
from tests.faults.conftest import (
    Row,
    assert_once,
    children,
    complete_checkpoints,
    event_counts,
    first_checkpoint,
    outcome,
    terminal,
)

pytestmark = pytest.mark.integration
NAME = "outage"


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_control_plane_restarted_mid_training(component, kubectl, operator, control_plane, namespace,
                                              tiny_model_pvc, test_node, fault_log):
    if control_plane.external:
        pytest.skip("restarts a control plane this suite runs")
    kubectl.apply(pvc("artifacts"), namespace)
    recorder = StatusRecorder(kubectl, namespace, NAME)
    recorder.start()
    kubectl.apply(tiny_run(NAME, tiny_model_pvc), namespace)
    out = first_checkpoint(kubectl, namespace, NAME)
    with frozen_trainer(kubectl, namespace, NAME) as pgid:
        control_plane.stop_process(component)
        try:
            seen = complete_checkpoints(out)[-1]
            run_until(pgid, lambda: complete_checkpoints(out)[-1] > seen, slice_s=0.05)  # trains during the outage
        finally:
            control_plane.start_process(component)
    lifted = time.monotonic()
    status, done = terminal(kubectl, namespace, NAME)
    recorder.join(timeout=60)
    assert_succeeded_with_results(status, namespace, NAME)
    assert status["message"] == "training finished"
    assert children(kubectl, namespace, NAME) == (1, 1)
    progresses = [s["progress"] for s in recorder.seen if s["progress"] is not None]
    assert progresses == sorted(progresses), recorder.seen
    events = event_counts(kubectl, namespace, NAME, "Awarded")
    assert_once(events, "JobCreated", "Running", "Succeeded", "Awarded")
    fault_log.record(Row(2 + (component == "etcd") / 10,
                         f"{component} restarted mid-training (stopped, then started with the same data)",
                         "the trainer trains on; the status catches up, nothing regresses; Succeeded, 1 Job",
                         outcome(kubectl, namespace, NAME, status, events), round(done - lifted, 1)))
