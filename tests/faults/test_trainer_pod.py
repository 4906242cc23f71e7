"""Fault 3: the trainer pod deleted, the run suspended, the run deleted, all mid-training, and the trainer
killed inside the save step. The Job's retry resumes from the step SIGTERM saved (or, after a SIGKILL, the
newest complete checkpoint), and no half-written adapter is ever reported as an artifact."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import (
    TINY_LORA,
    assert_succeeded_with_results,
    frozen_trainer,
    pvc,
    run_until,
    sigterm_pending,
    tiny_run,
    training_step,
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
    output_dir,
    ready_reason,
    terminal,
)

pytestmark = pytest.mark.integration


def _training_message(status: dict) -> str:
    return next(s.get("message") or "" for s in status["trainer"]["steps"] if s["name"] == "training")


def _job_failed(kubectl, namespace: str, name: str) -> int:
    return (kubectl.get("job", f"{name}-train", namespace)["status"]).get("failed") or 0


def _saved_at_sigterm(kubectl, namespace: str, name: str, out, inject) -> tuple[int, int, int, float]:
    """Hold the trainer, ``inject()`` what makes the node send SIGTERM, let it go once SIGTERM is pending (so it
    lands mid-training); return the newest periodic checkpoint, the step reported before, the checkpoint SIGTERM
    saved, and when the trainer was let go (time.monotonic)."""
    with frozen_trainer(kubectl, namespace, name) as pid:
        newest = complete_checkpoints(out)[-1]
        reported = training_step(kubectl, namespace, name)
        inject()
        wait_for("SIGTERM sent to the held trainer", lambda: sigterm_pending(pid), timeout=60, interval=0.05)
    released = time.monotonic()
    stopped = wait_for("the SIGTERM checkpoint", lambda: [n for n in complete_checkpoints(out) if n > newest],
                       timeout=60, interval=0.05)[0]
    return newest, reported, stopped, released


def test_trainer_pod_deleted_mid_training(kubectl, operator, namespace, tiny_model_pvc, test_node, fault_log):
    """`kubectl delete pod` with a grace period: SIGTERM reaches the trainer (held still until then, so it lands
    mid-training), which finishes its optimizer step, saves it and exits 143; the Job ignores that exit (no
    backoffLimit count) and the retry resumes from exactly that step."""
    name = "evicted"
    kubectl.apply(pvc("artifacts"), namespace)
    kubectl.apply(tiny_run(name, tiny_model_pvc), namespace)
    out = first_checkpoint(kubectl, namespace, name)

    def delete_pod() -> None:
        pod = kubectl("get", "pods", "-n", namespace, "-o", "name", "-l", f"batch.kubernetes.io/job-name={name}-train")
        kubectl("delete", pod.strip(), "-n", namespace, "--grace-period=30", "--wait=false")

    newest, reported, stopped, injected = _saved_at_sigterm(kubectl, namespace, name, out, delete_pod)
    status, done = terminal(kubectl, namespace, name)
    assert_succeeded_with_results(status, namespace, name)
    # Steps lost: 0. The retry starts from the step the deleted pod stopped at, not the last periodic save.
    assert f"resumed from checkpoint-{stopped};" in _training_message(status), _training_message(status)
    assert newest < stopped and reported <= stopped, (newest, reported, stopped)
    assert _job_failed(kubectl, namespace, name) == 0  # a disruption, not a failure: backoffLimit untouched
    assert children(kubectl, namespace, name) == (1, 1)  # the deleted pod is gone, its replacement finished
    events = event_counts(kubectl, namespace, name, "Awarded")
    assert_once(events, "JobCreated", "Succeeded", "Awarded")
    fault_log.record(Row(3, "the trainer pod deleted mid-training (kubectl delete pod, grace period 30 s; the "
                            "process node caps it at 10 s)",
                         "SIGTERM: the trainer saves the step in progress and exits 143; the Job ignores that exit "
                         f"(failed stays 0); the retry resumes from that step (here {stopped}, last periodic "
                         f"checkpoint {newest}); Succeeded",
                         outcome(kubectl, namespace, name, status, events) + "; Job failed count 0",
                         round(done - injected, 1)))


def test_run_suspended_mid_training(kubectl, operator, namespace, tiny_model_pvc, test_node, fault_log):
    """`spec.suspend: true` mid-training (as Kueue suspends a preempted workload's Job): the Job controller
    deletes the pod, the trainer saves the step in progress at SIGTERM; resumed, the new pod continues from
    exactly that step, and the Job counts no failure."""
    name = "paused"
    kubectl.apply(pvc("artifacts"), namespace)
    kubectl.apply(tiny_run(name, tiny_model_pvc), namespace)
    out = first_checkpoint(kubectl, namespace, name)
    newest, _, stopped, _ = _saved_at_sigterm(kubectl, namespace, name, out, lambda: kubectl(
        "patch", "ltj", name, "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": true}}'))
    suspended = wait_for("the run Suspended", lambda: (s := kubectl.status(namespace, name)).get(
        "phase") == "Suspended" and s, timeout=60, interval=0.2)
    wait_for("the pod gone while suspended (its GPU free)", lambda: children(kubectl, namespace, name) == (1, 0),
             timeout=60, interval=0.2)
    kubectl("patch", "ltj", name, "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    resumed = time.monotonic()
    status, done = terminal(kubectl, namespace, name)
    assert_succeeded_with_results(status, namespace, name)
    assert f"resumed from checkpoint-{stopped};" in _training_message(status), _training_message(status)
    assert _job_failed(kubectl, namespace, name) == 0
    events = event_counts(kubectl, namespace, name, "Awarded")
    assert_once(events, "JobCreated", "Succeeded", "Awarded")
    fault_log.record(Row(3.3, "the run suspended mid-training (spec.suspend, as Kueue preempts), then resumed",
                         "SIGTERM: the trainer saves the step in progress; Suspended with no pod; resumed, the new "
                         f"pod continues from that step (here {stopped}, last periodic checkpoint {newest}); "
                         "Succeeded, Job failed count 0",
                         f"in between: {suspended['phase']} ({ready_reason(suspended)}), no pod; then "
                         + outcome(kubectl, namespace, name, status, events) + "; Job failed count 0",
                         round(done - resumed, 1)))


def test_run_deleted_mid_training(kubectl, operator, namespace, tiny_model_pvc, test_node, fault_log):
    """`kubectl delete ltj` while it trains: the garbage collector deletes the Job and its pod, the trainer
    stops at SIGTERM with a checkpoint (a run recreated with the same spec resumes there) and the pod is gone
    within seconds, not a grace period. The run trains for far longer than the test waits, so the delete
    lands mid-training without holding the trainer."""
    name = "dropped"
    kubectl.apply(pvc("artifacts"), namespace)
    kubectl.apply(tiny_run(name, tiny_model_pvc, lora={**TINY_LORA, "maxSteps": 100_000, "saveSteps": 50_000}),
                  namespace)
    out = output_dir(kubectl, namespace, name)
    wait_for("training under way", lambda: training_step(kubectl, namespace, name) > 0, timeout=180, interval=0.2)
    kubectl("delete", "ltj", name, "-n", namespace, "--wait=false")
    injected = time.monotonic()
    wait_for("the run's pod gone", lambda: children(kubectl, namespace, name) == (0, 0), timeout=120, interval=0.2)
    gone = time.monotonic() - injected
    saved = complete_checkpoints(out)
    assert saved and 0 < saved[-1] < 50_000, saved  # not a periodic save: the one SIGTERM asked for
    fault_log.record(Row(3.2, "the run deleted mid-training (kubectl delete ltj)",
                         "the Job and its pod garbage-collected; SIGTERM: the trainer saves the step in progress "
                         "and exits; the pod gone in seconds",
                         f"pod gone {gone:.1f} s after the delete; checkpoint-{saved[-1]} saved at SIGTERM "
                         "(no periodic save yet)", round(gone, 1)))


def test_trainer_killed_inside_the_save_step(kubectl, operator, namespace, tiny_model_pvc, test_node, fault_log):
    """SIGKILL (an OOM kill, a node crash) while step 5 writes the adapter: it goes to adapter.partial/ and is
    renamed adapter/ only when complete, so the killed attempt leaves nothing that looks finished. The trainer is
    held from its start (else it may train past the last checkpoint, even save the adapter, before it is
    stopped) and let on in slices up to the kill."""
    name = "halfsaved"
    kubectl.apply(pvc("artifacts"), namespace)
    kubectl.apply(tiny_run(name, tiny_model_pvc), namespace)
    last = tiny_run(name, tiny_model_pvc)["spec"]["lora"]["maxSteps"]
    with held_at_first_checkpoint(kubectl, namespace, name) as (out, pgid):
        run_until(pgid, lambda: last - 40 in complete_checkpoints(out), slice_s=0.05)
        # From here in 2 ms slices, so the kill lands while the adapter is being written (far longer than a slice).
        staging = out / "adapter.partial"
        run_until(pgid, lambda: staging.is_dir() and any(staging.iterdir()), slice_s=0.002)
        assert not (out / "adapter").exists() and not (out / "manifest.json").exists(), \
            "the adapter was already saved"
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
