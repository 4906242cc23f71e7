"""Fault 1: the operator killed (SIGKILL: no cleanup handler runs) at each boundary of a run's life, then
started again. It must adopt what exists: exactly one Job, the right final phase, each Event that matters
posted once, and the trainer's reports going on where they were."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.conftest import (
    StatusRecorder,
    assert_succeeded_with_results,
    frozen_trainer,
    pvc,
    run_until,
    tiny_run,
    wait_for,
)
from tests.faults.conftest import (
    Row,
    assert_once,
    children,
    complete_checkpoints,
    event_counts,
    first_checkpoint,
    held_at_first_checkpoint,
    outcome,
    ready_reason,
    terminal,
)

pytestmark = pytest.mark.integration
NAME = "crash"


def before_the_job(kubectl, operator, namespace, models, test_node) -> float:
    operator.kill()
    kubectl.apply(tiny_run(NAME, models), namespace)
    assert children(kubectl, namespace, NAME) == (0, 0)
    operator.start()
    return time.monotonic()


def while_pending(kubectl, operator, namespace, models, test_node) -> float:
    kubectl("cordon", test_node.name)  # the pod waits for a node: the run is Pending
    try:
        kubectl.apply(tiny_run(NAME, models), namespace)
        wait_for("Pending (Unschedulable)", lambda: (s := kubectl.status(namespace, NAME)).get("phase") == "Pending"
                 and ready_reason(s) == "Unschedulable", timeout=60)
        operator.kill()
    finally:
        kubectl("uncordon", test_node.name)
    operator.start()
    return time.monotonic()


def while_running(kubectl, operator, namespace, models, test_node) -> float:
    kubectl.apply(tiny_run(NAME, models), namespace)
    out = first_checkpoint(kubectl, namespace, NAME)
    with frozen_trainer(kubectl, namespace, NAME) as pgid:
        operator.kill()
        seen = complete_checkpoints(out)[-1]
        # It trains on while the operator is down (its reports are refused and back off), one checkpoint more.
        run_until(pgid, lambda: complete_checkpoints(out)[-1] > seen, slice_s=0.05)
        operator.start()
    return time.monotonic()


def after_the_job_completed(kubectl, operator, namespace, models, test_node) -> float:
    kubectl.apply(tiny_run(NAME, models), namespace)
    with held_at_first_checkpoint(kubectl, namespace, NAME):
        # The status must say Running, and its Event be posted, before the kill: the restarted operator sees the
        # Job complete and goes on to Succeeded, so neither would come later. It derives Running from the pod,
        # which needs no step of the (held) trainer; a slow operator may not have got there by checkpoint 40.
        wait_for("Running", lambda: kubectl.status(namespace, NAME).get("phase") == "Running", timeout=60)
        kubectl.events(namespace, NAME, "TrainerRunning")  # the Running Event (Kopf posts it after the write)
        operator.kill()
    wait_for("the Job to complete without the operator", lambda: "True" in kubectl(
        "get", "job", f"{NAME}-train", "-n", namespace, "-o",
        "jsonpath={.status.conditions[?(@.type=='Complete')].status}"), timeout=300)
    assert kubectl.status(namespace, NAME)["phase"] == "Running"  # the status does not know yet
    operator.start()
    return time.monotonic()


BOUNDARIES: dict[str, tuple[Callable[..., float], str]] = {
    "before-the-job": (before_the_job, "the operator killed before the Job exists (resource created while down)"),
    "pending": (while_pending, "the operator killed while the run is Pending (node cordoned)"),
    "running": (while_running, "the operator killed while Running; the trainer trains on without it"),
    "job-completed": (after_the_job_completed,
                      "the operator killed; the Job completes before the status says so"),
}


@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_operator_killed_at_a_phase_boundary(boundary, kubectl, operator, namespace, tiny_model_pvc, test_node,
                                             fault_log):
    kubectl.apply(pvc("artifacts"), namespace)
    recorder = StatusRecorder(kubectl, namespace, NAME)
    recorder.start()
    inject, fault = BOUNDARIES[boundary]
    lifted = inject(kubectl, operator, namespace, tiny_model_pvc, test_node)
    status, done = terminal(kubectl, namespace, NAME)
    recorder.join(timeout=60)
    assert_succeeded_with_results(status, namespace, NAME)
    assert status["message"] == "training finished" and ready_reason(status) == "Succeeded"
    assert children(kubectl, namespace, NAME)[0] == 1
    progresses = [s["progress"] for s in recorder.seen if s["progress"] is not None]
    assert progresses == sorted(progresses), recorder.seen  # nothing regressed
    events = event_counts(kubectl, namespace, NAME, "Awarded")
    assert_once(events, "JobCreated", "Running", "Succeeded", "Awarded")
    assert not {"Failed", "Stalled"} & set(events), events
    fault_log.record(Row(1 + list(BOUNDARIES).index(boundary) / 10, fault,
                         "after the restart: 1 Job, Succeeded with metrics and XP, Events not repeated",
                         outcome(kubectl, namespace, NAME, status, events), round(done - lifted, 1)))
