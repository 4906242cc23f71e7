"""Job/Pod state -> status patch and events, without a cluster."""

import json
from datetime import UTC, datetime, timedelta

from lora_operator import progress
from lora_operator.status import merge_summary, observe, reconcile_status, set_condition

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _job(conditions=(), suspend=False, failed=0):
    return {"metadata": {"name": "demo-train"}, "spec": {"suspend": suspend},
            "status": {"conditions": [dict(c, status="True") for c in conditions], "failed": failed}}


def _pod(phase, name="demo-train-abc", created="2026-01-01T11:00:00Z", terminated=None, conditions=(), waiting=None):
    state = {}
    if terminated:
        state["terminated"] = terminated
    if waiting:
        state["waiting"] = waiting
    return {"metadata": {"name": name, "creationTimestamp": created},
            "status": {"phase": phase, "conditions": list(conditions),
                       "containerStatuses": [{"name": "trainer", "state": state}]}}


def test_observe_walks_the_phases() -> None:
    assert observe(None, []).phase == "Pending"
    assert observe(_job(), []).reason == "CreatingPod"
    unsched = _pod("Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                           "message": "0/1 nodes: Insufficient nvidia.com/gpu"}])
    obs = observe(_job(), [unsched])
    assert (obs.phase, obs.reason) == ("Pending", "Unschedulable") and "nvidia.com/gpu" in obs.message
    pull = _pod("Pending", waiting={"reason": "ImagePullBackOff", "message": "not found"})
    assert observe(_job(), [pull]).reason == "ImagePullBackOff"
    assert observe(_job(), [_pod("Running")]).phase == "Running"
    assert observe(_job(suspend=True), []).phase == "Suspended"
    assert observe(_job(suspend=True), [], queued=True).reason == "Queued"
    assert observe(_job([{"type": "Complete"}]), []).phase == "Succeeded"
    # Between the pod's exit and the Job's Complete condition the run must not flap back to Pending.
    done = _pod("Succeeded", terminated={"exitCode": 0, "reason": "Completed"})
    assert (observe(_job(), [done]).phase, observe(_job(), [done]).reason) == ("Running", "Finishing")


def test_failed_job_reports_pod_reason_exit_code_and_trainer_message() -> None:
    summary = json.dumps({"message": "step 1 datasets failed: no items left after refining"})
    pod = _pod("Failed", terminated={"exitCode": 2, "reason": "Error", "message": summary})
    obs = observe(_job([{"type": "Failed", "reason": "PodFailurePolicy", "message": "exit code 2"}]), [pod])
    assert obs.phase == "Failed" and obs.reason == "PodFailurePolicy"
    assert "exit code 2" in obs.message and "no items left" in obs.message


def test_failed_job_with_plain_log_termination_message() -> None:
    pod = _pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled", "message": "Killed\n"})
    obs = observe(_job([{"type": "Failed", "reason": "BackoffLimitExceeded"}]), [pod])
    assert "OOMKilled, exit code 137: Killed" in obs.message


def test_a_run_killed_for_memory_fails_with_reason_oomkilled_and_what_to_change() -> None:
    oom = _pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})
    obs = observe(_job([{"type": "Failed", "reason": "BackoffLimitExceeded", "message": "backoff"}]), [oom])
    assert (obs.phase, obs.reason) == ("Failed", "OOMKilled")
    assert "spec.resources.memory" in obs.message and "backoff" in obs.message
    error = _pod("Failed", terminated={"exitCode": 1, "reason": "Error"})
    assert observe(_job([{"type": "Failed", "reason": "BackoffLimitExceeded"}]), [error]).reason == \
        "BackoffLimitExceeded"


def test_reconcile_emits_one_event_per_phase_change_and_keeps_transition_times() -> None:
    patch, events = reconcile_status({}, _job(), [_pod("Running")], now=NOW, generation=1, stall_timeout=900)
    assert patch["phase"] == "Running" and patch["startTime"]
    assert [e.reason for e in events] == ["Running"]
    assert patch["steps"] and patch["stepSummary"] == "0/9 before-metrics"
    status = patch
    later = NOW + timedelta(seconds=5)
    patch2, events2 = reconcile_status(status, _job(), [_pod("Running")], now=later, generation=1,
                                       stall_timeout=900)
    assert events2 == [] and "phase" not in patch2
    running = next(c for c in status["conditions"] if c["type"] == "Running")
    assert running["status"] == "True" and running["observedGeneration"] == 1


def test_final_summary_from_termination_message_fills_lost_metrics() -> None:
    trainer_status = progress.initial_status()
    for i in range(10):
        trainer_status = progress.reduce(trainer_status, progress.StepEvent(index=i, state="Completed"))
    trainer_status = progress.reduce(trainer_status, progress.ReportEvent(
        improvements={"qualityPercent": 12.5}, xp=250, trainItems=100, artifacts={"adapter": "/output/adapter"}))
    message = progress.final_summary(trainer_status)
    pod = _pod("Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": message})
    stale = {"phase": "Running", "steps": progress.initial_status()["steps"], "startTime": "2026-01-01T11:00:00Z"}
    patch, events = reconcile_status(stale, _job([{"type": "Complete"}]), [pod], now=NOW, generation=1,
                                     stall_timeout=900)
    assert patch["phase"] == "Succeeded" and patch["xp"] == 250
    assert patch["improvements"] == {"qualityPercent": 12.5}
    assert all(s["state"] == "Completed" for s in patch["steps"])
    assert [e.reason for e in events] == ["Succeeded"]
    ready = next(c for c in patch["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


def test_failure_marks_the_active_step_failed() -> None:
    status = progress.reduce(progress.initial_status(), progress.StepEvent(index=4, state="Active"))
    status["phase"] = "Running"
    pod = _pod("Failed", terminated={"exitCode": 1, "reason": "Error", "message": "boom"})
    patch, events = reconcile_status(status, _job([{"type": "Failed", "reason": "BackoffLimitExceeded"}]), [pod],
                                     now=NOW, generation=1, stall_timeout=900)
    assert patch["phase"] == "Failed"
    assert patch["steps"][4]["state"] == "Failed"
    assert events[0].type == "Warning"


def test_terminal_phase_never_changes() -> None:
    status = {"phase": "Succeeded", "steps": progress.initial_status()["steps"]}
    patch, events = reconcile_status(status, None, [], now=NOW, generation=1, stall_timeout=900)
    assert "phase" not in patch and events == []


def test_stalled_condition_after_timeout() -> None:
    status = {"phase": "Running", "steps": progress.initial_status()["steps"],
              "lastProgressTime": (NOW - timedelta(seconds=1000)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    patch, events = reconcile_status(status, _job(), [_pod("Running")], now=NOW, generation=1, stall_timeout=900)
    stalled = next(c for c in patch["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "NoProgress"
    assert [e.reason for e in events] == ["Stalled"]
    status["lastProgressTime"] = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    patch, _ = reconcile_status({**status, **patch}, _job(), [_pod("Running")], now=NOW, generation=1,
                                stall_timeout=900)
    assert next(c for c in patch["conditions"] if c["type"] == "Stalled")["status"] == "False"


def test_quality_regressed_condition() -> None:
    status = {"phase": "Succeeded", "steps": progress.initial_status()["steps"],
              "before": {"overall": 60.0, "weightedOverall": 61.0, "evalLoss": 2.0},
              "after": {"overall": 40.0, "weightedOverall": 41.0, "evalLoss": 2.5}}
    patch, events = reconcile_status(status, None, [], now=NOW, generation=1, stall_timeout=900)
    cond = next(c for c in patch["conditions"] if c["type"] == "QualityRegressed")
    assert cond["status"] == "True" and "weighted overall quality 61.0 -> 41.0" in cond["message"]
    assert [e.reason for e in events] == ["QualityRegressed"]
    # Judged on the same number as qualityPoints and XP: a better weighted score is no regression.
    mixed = {**status, "after": {"overall": 58.0, "weightedOverall": 63.0}}
    patch, events = reconcile_status(mixed, None, [], now=NOW, generation=1, stall_timeout=900)
    assert next(c for c in patch["conditions"] if c["type"] == "QualityRegressed")["status"] == "False"
    assert events == []


def test_set_condition_keeps_transition_time_when_status_is_unchanged() -> None:
    conds = set_condition([], "Ready", "False", "Pending", "", "t1", 1)
    conds = set_condition(conds, "Ready", "False", "Running", "x", "t2", 2)
    assert conds[0]["lastTransitionTime"] == "t1" and conds[0]["reason"] == "Running"
    conds = set_condition(conds, "Ready", "True", "Succeeded", "", "t3", 2)
    assert conds[0]["lastTransitionTime"] == "t3"


def test_merge_summary_keeps_step_timestamps() -> None:
    status = progress.reduce(progress.initial_status(), progress.StepEvent(index=0, state="Active",
                                                                          time="2026-01-01T10:00:00Z"))
    patch = merge_summary(status, {"steps": [{"name": "before-metrics", "state": "Completed"}], "xp": 5})
    assert patch["steps"][0] == {"name": "before-metrics", "state": "Completed", "startTime": "2026-01-01T10:00:00Z"}
    assert patch["xp"] == 5


def test_spec_drift_ignores_suspend_and_defaults() -> None:
    from lora_operator.status import spec_drift

    frozen = {"model": {"hubId": "a/b"}, "datasets": [{"builtin": "minion-handbook"}], "suspend": True}
    same_with_defaults = {**frozen, "suspend": False, "lora": {"rank": 8}}
    assert spec_drift(frozen, same_with_defaults) == []
    assert spec_drift(frozen, {**frozen, "lora": {"rank": 16}}) == ["lora"]
    assert spec_drift(frozen, {**frozen, "model": {"hubId": "c/d"}, "queueName": "q"}) == ["model", "queueName"]


def test_a_job_about_to_end_does_not_flap_back_to_pending() -> None:
    gone = _pod("Failed", terminated={"exitCode": 2, "reason": "Error"})
    failing = observe(_job([{"type": "FailureTarget", "message": "Container trainer for pod x failed with exit "
                                                                  "code 2 matching FailJob rule at index 0"}]), [gone])
    assert (failing.phase, failing.reason) == ("Running", "Failing") and "exit code 2" in failing.message
    succeeding = observe(_job([{"type": "SuccessCriteriaMet"}]), [])
    assert (succeeding.phase, succeeding.reason) == ("Running", "Finishing")


def test_non_finite_numbers_never_reach_the_status() -> None:
    status = progress.reduce(progress.initial_status(), progress.EvalEvent(step=2, evalLoss=float("nan")))
    status = progress.reduce(status, progress.MetricsEvent(which="after", scores={"perplexity": float("inf"),
                                                                                   "overall": 40.0}))
    assert status["evalLoss"] is None and status["after"] == {"perplexity": None, "overall": 40.0}
    json.dumps(status, allow_nan=False)  # what the apiserver accepts
    pod = _pod("Succeeded", terminated={"exitCode": 0, "message": '{"xp": 10, "evalLoss": NaN, "loss": Infinity}'})
    patch, _ = reconcile_status({"phase": "Running"}, _job([{"type": "Complete"}]), [pod], now=NOW, generation=1,
                                stall_timeout=900)
    assert patch["xp"] == 10 and "evalLoss" not in patch and "loss" not in patch
    json.dumps(patch, allow_nan=False)


def test_a_job_gone_before_its_end_is_never_recreated_and_ends_the_run() -> None:
    steps = progress.initial_status()["steps"]
    running = {"phase": "Running", "jobName": "demo-train", "steps": steps}
    patch, events = reconcile_status(running, None, [], now=NOW, generation=1, stall_timeout=900)
    assert patch["phase"] == "Failed" and "Job demo-train was deleted before it finished" in patch["message"]
    assert [(e.type, e.reason) for e in events] == [("Warning", "Failed")]
    # Removed by ttlSecondsAfterFinished while the operator was away: the trainer had reported every step.
    done = {**running, "steps": [dict(s, state="Completed") for s in steps], "xp": 120}
    patch, _ = reconcile_status(done, None, [], now=NOW, generation=1, stall_timeout=900)
    assert patch["phase"] == "Succeeded" and next(
        c for c in patch["conditions"] if c["type"] == "Ready")["reason"] == "Succeeded"
    # Before the Job was ever created, no Job is just that.
    assert reconcile_status({}, None, [], now=NOW, generation=1, stall_timeout=900)[0]["phase"] == "Pending"
