"""Fault 4: the Node deleted while its pod runs, and the Job's activeDeadlineSeconds exceeded."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import assert_succeeded_with_results, frozen_trainer, pvc, sigterm_pending, tiny_run, wait_for
from tests.faults.conftest import (
    Row,
    assert_once,
    children,
    complete_checkpoints,
    event_counts,
    first_checkpoint,
    outcome,
    ready_reason,
    terminal,
)

pytestmark = pytest.mark.integration


def test_node_deleted_while_the_pod_runs(kubectl, operator, namespace, tiny_model_pvc, test_node, fault_log):
    """The pod garbage collector deletes the pods of a Node that is gone (after a 40 s quarantine); the Job's
    replacement waits for a node; the node agent restarts and registers again, as a kubelet would."""
    name = "orphan"
    kubectl.apply(pvc("artifacts"), namespace)
    kubectl.apply(tiny_run(name, tiny_model_pvc), namespace)
    out = first_checkpoint(kubectl, namespace, name)
    try:
        with frozen_trainer(kubectl, namespace, name) as pid:  # else it may finish on the deleted node meanwhile
            newest = complete_checkpoints(out)[-1]
            kubectl("delete", "node", test_node.name)
            # The pod garbage collector force-deletes the pod: the node agent sends SIGTERM and, after its grace
            # cap, SIGKILL. Held until then, the trainer is killed where it was held: no SIGTERM checkpoint.
            wait_for("the trainer killed", lambda: not Path(f"/proc/{pid}").exists(), timeout=180, interval=0.2)
            waiting = wait_for("the run Pending without a node", lambda: (s := kubectl.status(namespace, name)).get(
                "phase") == "Pending" and ready_reason(s) == "Unschedulable" and s, timeout=180)
    finally:
        test_node.restart()
    lifted = time.monotonic()
    status, done = terminal(kubectl, namespace, name)
    assert_succeeded_with_results(status, namespace, name)
    training = next(s["message"] for s in status["trainer"]["steps"] if s["name"] == "training")
    assert f"resumed from checkpoint-{newest};" in training, training
    assert children(kubectl, namespace, name)[0] == 1
    events = event_counts(kubectl, namespace, name, "Awarded")
    assert_once(events, "JobCreated", "Succeeded", "Awarded")
    fault_log.record(Row(4, "the Node deleted while its pod runs; the node agent re-registers once the pod is "
                            "garbage-collected",
                         f"Pending (Unschedulable) while no node exists, then the retry resumes (here from "
                         f"checkpoint-{newest}); Succeeded",
                         f"in between: Pending ({ready_reason(waiting)}: {waiting['message']}); then "
                         + outcome(kubectl, namespace, name, status, events), round(done - lifted, 1)))


def test_active_deadline_exceeded(kubectl, operator, namespace, tiny_model_pvc, test_node, fault_log):
    name = "late"
    kubectl.apply(pvc("artifacts"), namespace)
    kubectl.apply(tiny_run(name, tiny_model_pvc, runtime={"activeDeadlineSeconds": 60}), namespace)
    first_checkpoint(kubectl, namespace, name)
    with frozen_trainer(kubectl, namespace, name) as pid:  # a trainer slower than its deadline
        # The Job controller deletes the pod and writes FailureTarget in one sync: held until SIGTERM is sent,
        # the trainer cannot run on (and finish) between the two.
        wait_for("SIGTERM sent to the held trainer", lambda: sigterm_pending(pid), timeout=180, interval=0.1)
        wait_for("the Job to fail", lambda: "True" in kubectl(
            "get", "job", f"{name}-train", "-n", namespace, "-o",
            "jsonpath={.status.conditions[?(@.type=='FailureTarget')].status}"), timeout=180)
    status, done = terminal(kubectl, namespace, name)
    started = datetime.fromisoformat(kubectl.get("job", f"{name}-train", namespace)["status"]["startTime"])
    deadline = started.timestamp() + 60 - (time.time() - time.monotonic())  # on the monotonic clock
    assert status["phase"] == "Failed" and ready_reason(status) == "DeadlineExceeded", status
    assert "active longer than specified deadline" in status["message"], status["message"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Failed"]["reason"] == "DeadlineExceeded"
    assert conditions["XPAwarded"]["status"] == "False" and status.get("xp") is None
    assert next(s for s in status["trainer"]["steps"] if s["name"] == "training")["state"] == "Failed"
    events = event_counts(kubectl, namespace, name, "DeadlineExceeded")
    # The Job controller deletes the pod before it writes FailureTarget: the run stays Running meanwhile.
    assert_once(events, "JobCreated", "Pending", "Running", "Failed")
    assert "Awarded" not in events
    fault_log.record(Row(4.1, "the Job's activeDeadlineSeconds (spec.runtime, here 60) exceeded: a frozen trainer",
                         "Failed, reason DeadlineExceeded, the active step Failed, no XP, no artifact",
                         outcome(kubectl, namespace, name, status, events), round(done - deadline, 1)))
