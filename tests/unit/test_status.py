"""Job/Pod state -> status and events, without a cluster."""

import json
from datetime import UTC, datetime, timedelta

from lora_contract import progress
from lora_contract.api import Condition, GradeScores, TrainerStatus
from lora_contract.xp import award_xp
from lora_operator.status import (
    ephemeral_output,
    group_action,
    group_restart_limit,
    group_restarted,
    merge_summary,
    observe,
    parse,
    reconcile_status,
    set_condition,
    status_patch,
    xp_refusal,
)

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


def _reconcile(status: dict, job, pods, **kwargs) -> tuple[dict, list]:
    """reconcile_status at the API edge: a status as read from the API in, the merge patch out."""
    old = parse(status)
    new, events = reconcile_status(old, job, pods, now=kwargs.pop("now", NOW), generation=1, stall_timeout=900,
                                   **kwargs)
    return status_patch(old, new), events


def _trainer(*events) -> dict:
    status = progress.initial_status()
    for event in events:
        status = progress.reduce(status, event)
    return progress.dump_status(status)


def _all_steps_completed(report: progress.ReportEvent | None = None) -> TrainerStatus:
    status = progress.initial_status()
    for i in range(10):
        status = progress.reduce(status, progress.StepEvent(index=i, state="Completed"))
    return progress.reduce(status, report) if report else status


def test_reconcile_emits_one_event_per_phase_change_and_keeps_transition_times() -> None:
    patch, events = _reconcile({}, _job(), [_pod("Running")])
    assert patch["phase"] == "Running" and patch["startTime"]
    assert [e.reason for e in events] == ["Running"]
    assert patch["trainer"]["steps"] and patch["trainer"]["stepSummary"] == "0/9 before-metrics"
    status = patch
    patch2, events2 = _reconcile(status, _job(), [_pod("Running")], now=NOW + timedelta(seconds=5))
    assert events2 == [] and patch2 == {}
    running = next(c for c in status["conditions"] if c["type"] == "Running")
    assert running["status"] == "True" and running["observedGeneration"] == 1


def test_final_summary_fills_lost_metrics_and_the_operator_awards_the_xp() -> None:
    report = progress.ReportEvent(improvements={"qualityPercent": 12.5}, trainItems=100,
                                  artifacts={"adapter": "/output/adapter"})
    final = _all_steps_completed(report)
    final.before, final.after = GradeScores(weighted_overall=40.0), GradeScores(weighted_overall=50.0)
    pod = _pod("Succeeded", terminated={"exitCode": 0, "reason": "Completed", "message": progress.final_summary(final)})
    stale = {"phase": "Running", "trainer": _trainer(), "startTime": "2026-01-01T11:00:00Z"}
    patch, events = _reconcile(stale, _job([{"type": "Complete"}]), [pod])
    assert patch["phase"] == "Succeeded"
    assert patch["xp"] == award_xp(100, 10.0) == 300  # the table's 250 for 100 items, x1.2 for +10 points
    assert patch["trainer"]["improvements"] == {"qualityPercent": 12.5}
    assert all(s["state"] == "Completed" for s in patch["trainer"]["steps"])
    assert [e.reason for e in events] == ["Succeeded", "Awarded"]
    conditions = {c["type"]: c for c in patch["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["XPAwarded"]["status"] == "True" and "300 XP for 100" in conditions["XPAwarded"]["message"]


def test_xp_is_the_operators_and_only_for_a_succeeded_run_of_a_trusted_image() -> None:
    reported = progress.dump_status(_all_steps_completed(progress.ReportEvent(
        improvements={}, trainItems=10, artifacts={})))
    running = {"phase": "Running", "trainer": reported}
    patch, _ = _reconcile(running, _job([{"type": "Complete"}]), [])
    assert patch["xp"] == award_xp(10, None)  # nothing graded: the low multiplier
    patch, events = _reconcile(running, _job([{"type": "Complete"}]), [],
                               xp_refused=xp_refusal({}, "evil/trainer:1"))
    assert "xp" not in patch and "Awarded" not in [e.reason for e in events]
    cond = next(c for c in patch["conditions"] if c["type"] == "XPAwarded")
    assert (cond["status"], cond["reason"]) == ("False", "UntrustedImage") and "evil/trainer:1" in cond["message"]
    patch, events = _reconcile(running, _job([{"type": "Complete"}]), [],
                               xp_refused=xp_refusal({"model": {"trustRemoteCode": True}}, None))
    assert "xp" not in patch and "Awarded" not in [e.reason for e in events]
    cond = next(c for c in patch["conditions"] if c["type"] == "XPAwarded")
    assert (cond["status"], cond["reason"]) == ("False", "RemoteCode") and "trustRemoteCode" in cond["message"]
    assert xp_refusal({"model": {"trustRemoteCode": False}}, None) is None
    patch, _ = _reconcile(running, _job([{"type": "Failed", "reason": "BackoffLimitExceeded"}]), [])
    assert "xp" not in patch
    assert next(c for c in patch["conditions"] if c["type"] == "XPAwarded")["reason"] == "NotSucceeded"


def test_a_run_over_several_pods_takes_its_summary_from_index_0_the_pod_of_rank_0() -> None:
    report = progress.ReportEvent(improvements={"qualityPercent": 12.5}, trainItems=100, artifacts={})
    final = _all_steps_completed(report)
    final.before, final.after = GradeScores(weighted_overall=40.0), GradeScores(weighted_overall=50.0)
    rank0 = _pod("Succeeded", name="demo-train-0-abc", terminated={
        "exitCode": 0, "reason": "Completed", "message": progress.final_summary(final)})
    worker = _pod("Succeeded", name="demo-train-1-def", created="2026-01-01T11:00:01Z",  # newer, and says nothing
                  terminated={"exitCode": 0, "reason": "Completed", "message": ""})
    for pod, index in ((rank0, "0"), (worker, "1")):
        pod["metadata"]["annotations"] = {"batch.kubernetes.io/job-completion-index": index}
    stale = {"phase": "Running", "trainer": _trainer(), "startTime": "2026-01-01T11:00:00Z"}
    patch, _ = _reconcile(stale, _job([{"type": "Complete"}]), [rank0, worker])
    assert patch["trainer"]["improvements"] == {"qualityPercent": 12.5} and patch["xp"] == 300


def test_a_termination_message_that_is_not_a_valid_summary_is_not_merged() -> None:
    claims = json.dumps({"trainItems": 5, "xp": 99999, "phase": "Succeeded"})  # fields a trainer never sets
    pod = _pod("Succeeded", terminated={"exitCode": 0, "message": claims})
    patch, _ = _reconcile({"phase": "Running"}, _job([{"type": "Complete"}]), [pod])
    assert "xp" not in patch and "trainItems" not in patch["trainer"]


def test_failure_marks_the_active_step_failed() -> None:
    status = {"phase": "Running", "trainer": _trainer(progress.StepEvent(index=4, state="Active"))}
    pod = _pod("Failed", terminated={"exitCode": 1, "reason": "Error", "message": "boom"})
    patch, events = _reconcile(status, _job([{"type": "Failed", "reason": "BackoffLimitExceeded"}]), [pod])
    assert patch["phase"] == "Failed"
    assert patch["trainer"]["steps"][4]["state"] == "Failed"
    assert events[0].type == "Warning"


def test_terminal_phase_never_changes() -> None:
    status = {"phase": "Succeeded", "trainer": _trainer()}
    patch, events = _reconcile(status, None, [])
    assert "phase" not in patch and events == []


def test_stalled_condition_after_timeout() -> None:
    trainer = _trainer()
    trainer["lastProgressTime"] = (NOW - timedelta(seconds=1000)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {"phase": "Running", "trainer": trainer}
    patch, events = _reconcile(status, _job(), [_pod("Running")])
    stalled = next(c for c in patch["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "NoProgress"
    assert [e.reason for e in events] == ["Stalled"]
    trainer["lastProgressTime"] = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    patch, _ = _reconcile({**status, **patch}, _job(), [_pod("Running")])
    assert next(c for c in patch["conditions"] if c["type"] == "Stalled")["status"] == "False"


def test_quality_regressed_condition() -> None:
    trainer = {**_trainer(), "before": {"overall": 60.0, "weightedOverall": 61.0, "evalLoss": 2.0},
               "after": {"overall": 40.0, "weightedOverall": 41.0, "evalLoss": 2.5}}
    status = {"phase": "Succeeded", "trainer": trainer}
    patch, events = _reconcile(status, None, [])
    cond = next(c for c in patch["conditions"] if c["type"] == "QualityRegressed")
    assert cond["status"] == "True" and "weighted overall quality 61.0 -> 41.0" in cond["message"]
    assert [e.reason for e in events] == ["QualityRegressed"]
    # Judged on the same number as qualityPoints and XP: a better weighted score is no regression.
    mixed = {**status, "trainer": {**trainer, "after": {"overall": 58.0, "weightedOverall": 63.0}}}
    patch, events = _reconcile(mixed, None, [])
    assert next(c for c in patch["conditions"] if c["type"] == "QualityRegressed")["status"] == "False"
    assert events == []


def test_set_condition_keeps_transition_time_when_status_is_unchanged() -> None:
    conds: list[Condition] = set_condition([], "Ready", "False", "Pending", "", "t1", 1)
    conds = set_condition(conds, "Ready", "False", "Running", "x", "t2", 2)
    assert conds[0].last_transition_time == "t1" and conds[0].reason == "Running"
    conds = set_condition(conds, "Ready", "True", "Succeeded", "", "t3", 2)
    assert conds[0].last_transition_time == "t3"


def test_merge_summary_keeps_step_timestamps() -> None:
    status = progress.reduce(progress.initial_status(), progress.StepEvent(index=0, state="Active",
                                                                          time="2026-01-01T10:00:00Z"))
    summary = TrainerStatus.model_validate({"steps": [{"name": "before-metrics", "state": "Completed"}],
                                            "trainItems": 5})
    merged = progress.dump_status(merge_summary(status, summary))
    assert merged["steps"][0] == {"name": "before-metrics", "state": "Completed", "startTime": "2026-01-01T10:00:00Z"}
    assert merged["trainItems"] == 5


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
    # As the trainer builds them: a diverged model's perplexity is computed, not validated.
    scores = GradeScores.model_construct(perplexity=float("inf"), overall=40.0)
    status = progress.reduce(status, progress.MetricsEvent(which="after", scores=scores))
    dumped = progress.dump_status(status)
    assert "evalLoss" not in dumped and dumped["after"] == {"overall": 40.0}
    json.dumps(dumped, allow_nan=False)  # what the apiserver accepts
    message = '{"trainItems": 10, "evalLoss": NaN, "loss": Infinity}'
    pod = _pod("Succeeded", terminated={"exitCode": 0, "message": message})
    patch, _ = _reconcile({"phase": "Running"}, _job([{"type": "Complete"}]), [pod])
    trainer = patch["trainer"]
    assert trainer["trainItems"] == 10 and "evalLoss" not in trainer and "loss" not in trainer
    json.dumps(patch, allow_nan=False)


def test_a_job_gone_before_its_end_is_never_recreated_and_ends_the_run() -> None:
    running = {"phase": "Running", "jobName": "demo-train", "trainer": _trainer()}
    patch, events = _reconcile(running, None, [])
    assert patch["phase"] == "Failed" and "Job demo-train was deleted before it finished" in patch["message"]
    assert [(e.type, e.reason) for e in events] == [("Warning", "Failed")]
    # Removed by ttlSecondsAfterFinished while the operator was away: the trainer had reported every step.
    done = {**running, "trainer": progress.dump_status(_all_steps_completed())}
    patch, _ = _reconcile(done, None, [])
    assert patch["phase"] == "Succeeded" and next(
        c for c in patch["conditions"] if c["type"] == "Ready")["reason"] == "Succeeded"
    # Before the Job was ever created, no Job is just that.
    assert _reconcile({}, None, [])[0]["phase"] == "Pending"


_TRACKING = "batch.kubernetes.io/job-tracking"  # the Job controller's finalizer on every pod it counts


def _tracked(pod, uid="uid-1", deleted=False, finalizer=True):
    """``pod`` as the Job controller's pods are: a UID, its tracking finalizer until counted, maybe deleted."""
    meta = dict(pod["metadata"], uid=uid, finalizers=[_TRACKING] if finalizer else [])
    if deleted:
        meta["deletionTimestamp"] = "2026-01-01T11:59:59Z"
    return {**pod, "metadata": meta}


def _phases(steps) -> list[str]:
    """The phase Events a run posts over a sequence of (Job, pods) looks, as the operator's syncs see them."""
    status: dict = {}
    posted = []
    for i, (job, pods) in enumerate(steps):
        patch, events = _reconcile(status, job, pods, now=NOW + timedelta(seconds=i))
        status = {**status, **patch}
        posted += [e.reason for e in events if e.reason in ("Pending", "Running", "Succeeded", "Failed")]
    return posted


def test_a_pod_the_job_deletes_at_its_deadline_does_not_make_the_run_pending() -> None:
    """The Job controller deletes the active pod first and writes FailureTarget (DeadlineExceeded) right after:
    a sync in between sees a terminating pod and a Job that says nothing yet. The pod then fails, is counted
    (its UID in uncountedTerminatedPods, its finalizer removed) and goes; then the Job is Failed."""
    deadline = {"type": "FailureTarget", "reason": "DeadlineExceeded",
                "message": "Job was active longer than specified deadline"}
    failed = {**deadline, "type": "Failed"}
    running = _tracked(_pod("Running"))
    deleted = _tracked(_pod("Running"), deleted=True)
    killed = _tracked(_pod("Failed", terminated={"exitCode": 143, "reason": "Error"}), deleted=True)
    counting = _job([deadline])
    counting["status"]["uncountedTerminatedPods"] = {"failed": ["uid-1"]}
    steps = [(_job(), []), (_job(), [running]), (_job(), [deleted]), (counting, [deleted]),
             (counting, [killed]), (_job([deadline], failed=1), [_tracked(killed, finalizer=False)]),
             (_job([deadline, failed], failed=1), [])]
    assert _phases(steps) == ["Pending", "Running", "Failed"]
    obs = observe(_job(), [deleted])
    assert (obs.phase, obs.reason) == ("Running", "TrainerRunning") and "being deleted" in obs.message


def test_a_failed_pod_the_job_has_not_counted_yet_changes_nothing() -> None:
    """Backoff exhausted: the pod fails on its own and the Job's next status names it and FailureTarget at once;
    a sync in between must not call the run Pending. A retry is Pending once the Job has counted the pod."""
    crashed = _tracked(_pod("Failed", terminated={"exitCode": 1, "reason": "Error"}))
    assert observe(_job(), [crashed]) is None
    exhausted = _job([{"type": "FailureTarget", "reason": "BackoffLimitExceeded"}])
    exhausted["status"]["uncountedTerminatedPods"] = {"failed": ["uid-1"]}
    steps = [(_job(), [_tracked(_pod("Running"))]), (_job(), [crashed]), (exhausted, [crashed]),
             (_job([{"type": "FailureTarget", "reason": "BackoffLimitExceeded"}, {
                 "type": "Failed", "reason": "BackoffLimitExceeded"}], failed=1), [])]
    assert _phases(steps) == ["Running", "Failed"]
    retrying = _job(failed=1)
    retry = [(_job(), [_tracked(_pod("Running"))]), (_job(), [crashed]),
             (retrying, [_tracked(crashed, finalizer=False)]),
             (retrying, [_tracked(crashed, finalizer=False), _tracked(_pod(
                 "Running", name="demo-train-def", created="2026-01-01T11:30:00Z"), uid="uid-2")])]
    assert _phases(retry) == ["Running", "Pending", "Running"]
    assert "retry 1" in observe(retrying, [_tracked(crashed, finalizer=False)]).message


def test_a_pod_stopped_by_sigterm_is_named_as_the_reason_for_the_retry() -> None:
    """Exit 143 is a disruption the Job does not count (failed stays 0): the message says why a new pod comes."""
    stopped = _tracked(_pod("Failed", terminated={"exitCode": 143, "reason": "Error"}), finalizer=False)
    obs = observe(_job(), [stopped])
    assert (obs.phase, obs.reason) == ("Pending", "CreatingPod")
    assert "retry" not in obs.message.split("(")[0] and "pod demo-train-abc was stopped by SIGTERM; the retry " \
        "resumes from its checkpoint" in obs.message
    running = _tracked(_pod("Running", name="demo-train-new", created="2026-01-01T11:05:00Z"), uid="uid-2")
    assert "stopped by SIGTERM" in observe(_job(), [stopped, running]).message
    crashed = _tracked(_pod("Failed", terminated={"exitCode": 1, "reason": "Error"}), finalizer=False)
    assert "SIGTERM" not in observe(_job(failed=1), [crashed]).message


def test_a_run_whose_results_die_with_its_pod_gets_a_warning_condition_once() -> None:
    assert ephemeral_output({}) and ephemeral_output({"output": {"merge": True}})
    assert not ephemeral_output({"output": {"claimName": "adapters"}})
    assert not ephemeral_output({"output": {"destinations": [{"uri": "s3://b/x"}]}})
    patch, events = _reconcile({}, None, [], ephemeral_output=True)
    cond = next(c for c in patch["conditions"] if c["type"] == "ArtifactsEphemeral")
    assert (cond["status"], cond["reason"]) == ("True", "NoPersistentOutput") and "emptyDir" in cond["message"]
    assert [e.type for e in events if e.reason == "ArtifactsEphemeral"] == ["Warning"]
    again, events = _reconcile({**patch}, None, [], ephemeral_output=True)  # said once: no new event, no write
    assert "conditions" not in again and not [e for e in events if e.reason == "ArtifactsEphemeral"]
    patch, _ = _reconcile({}, None, [])
    assert all(c["type"] != "ArtifactsEphemeral" for c in patch["conditions"])


def test_a_group_whose_worker_died_is_restarted_as_a_whole_until_backoff_limit_then_fails() -> None:
    """A run over several pods: its Job failed by the rule for a dead worker (exit code 1) is deleted and created
    again, counted in groupRestarts, at most backoffLimit times; the run stays Running meanwhile."""
    died = _pod("Failed", name="demo-train-1-x", terminated={"exitCode": 1, "reason": "Error", "message": "boom"})
    broken = _job([{"type": "Failed", "reason": "PodFailurePolicy",
                    "message": "Container trainer for pod ns/demo-train-1-x failed with exit code 1"}])
    running = {"phase": "Running", "jobName": "demo-train", "trainer": _trainer()}
    patch, events = _reconcile(running, broken, [died], group_restarts=2)
    assert patch["groupRestarts"] == 1 and "phase" not in patch, patch
    cond = next(c for c in patch["conditions"] if c["type"] == "GroupRestarting")
    assert (cond["status"], cond["reason"]) == ("True", "WorkerDied")
    assert "restart 1 of 2" in cond["message"] and "exit code 1" in cond["message"] and "boom" in cond["message"]
    assert [(e.type, e.reason) for e in events] == [("Warning", "GroupRestarting")]
    restarting = parse({**running, **patch})
    assert group_action(restarting, broken) == "delete"
    deleting = {**broken, "metadata": {**broken["metadata"], "deletionTimestamp": "2026-01-01T12:00:01Z"}}
    assert group_action(restarting, deleting) is None
    # While the old Job is deleted and when it is gone, nothing about the run changes, and no Job gone is a failure.
    for job in (deleting, None):
        again, events = _reconcile({**running, **patch}, job, [])
        assert "phase" not in again and events == [], again
    assert group_action(restarting, None) == "create"
    created = group_restarted(restarting, "2026-01-01T12:01:00Z", 1)
    assert group_action(created, None) is None and not any(
        c.type == "GroupRestarting" and c.status == "True" for c in created.conditions)
    # The next break is the second restart; the third fails the run, saying why.
    status = progress.dump_status(created.trainer)
    second, _ = _reconcile({**running, "groupRestarts": 1, "trainer": status}, broken, [died], group_restarts=2)
    assert second["groupRestarts"] == 2
    final, events = _reconcile({**running, "groupRestarts": 2, "trainer": status}, broken, [died], group_restarts=2)
    assert final["phase"] == "Failed" and "restarted 2 times" in final["message"], final
    assert "groupRestarts" not in final and [e.reason for e in events] == ["Failed"]


def test_invalid_input_and_one_pod_runs_are_never_restarted_as_a_group() -> None:
    invalid = _pod("Failed", terminated={"exitCode": 2, "reason": "Error"})
    job = _job([{"type": "Failed", "reason": "PodFailurePolicy", "message": "exit code 2"}])
    running = {"phase": "Running", "jobName": "demo-train"}
    assert _reconcile(running, job, [invalid], group_restarts=2)[0]["phase"] == "Failed"
    died = _pod("Failed", terminated={"exitCode": 1, "reason": "Error"})
    assert _reconcile(running, job, [died])[0]["phase"] == "Failed"  # one pod: the Job's own retries
    deadline = _job([{"type": "Failed", "reason": "DeadlineExceeded"}])
    assert _reconcile(running, deadline, [died], group_restarts=2)[0]["phase"] == "Failed"
    assert group_restart_limit({"resources": {"nodes": 2}}) == 2
    assert group_restart_limit({"resources": {"nodes": 3}, "runtime": {"backoffLimit": 0}}) == 0
    assert group_restart_limit({"runtime": {"backoffLimit": 5}}) == 0


def test_a_run_waiting_for_its_minion_keeps_saying_so_until_its_job_exists() -> None:
    waiting = {"phase": "Pending", "message": "waiting for Minion ana in namespace ns: ...", "conditions": [
        {"type": "Ready", "status": "False", "reason": "MinionNotFound", "message": "waiting for Minion ana",
         "lastTransitionTime": "2026-01-01T11:00:00Z"}]}
    patch, events = _reconcile(waiting, None, [])
    assert "message" not in patch and "phase" not in patch and events == [], patch
    ready = next(c for c in patch.get("conditions", waiting["conditions"]) if c["type"] == "Ready")
    assert ready["reason"] == "MinionNotFound"
    patch, _ = _reconcile(waiting, _job(), [_pod("Running")])
    assert patch["phase"] == "Running"
