"""Pure status logic of the operator: Job and Pod state in, a status patch and events out.

The operator owns ``phase``, ``conditions``, ``message``, ``jobName`` and the timestamps;
the trainer owns the progress fields (see ``progress``). At the end the operator also
merges the trainer's final summary from the pod's termination message, so a run whose
last direct status update failed still ends with its metrics in the status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lora_operator import builders, progress
from lora_operator.api import PIPELINE_STEPS, LoraTrainingJobSpec, Phase

TERMINAL: frozenset[str] = frozenset({"Succeeded", "Failed"})
CONDITION_TYPES = ("Ready", "Running", "Succeeded", "Failed", "Stalled", "QualityRegressed")


@dataclass(frozen=True)
class Observation:
    phase: Phase
    reason: str
    message: str


@dataclass(frozen=True)
class KubeEvent:
    """A Kubernetes Event to post on the resource."""

    type: str  # Normal or Warning
    reason: str
    message: str


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _true_conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == builders.CONTAINER:
            return (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
    return None


def _newest(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)


def termination_summary(pods: list[dict[str, Any]], phase: str) -> dict[str, Any] | None:
    """The trainer's final JSON summary from the newest pod that ended in ``phase``."""
    ended = [p for p in pods if (p.get("status") or {}).get("phase") == phase]
    pod = _newest(ended)
    term = _terminated(pod) if pod else None
    text = (term or {}).get("message") or ""
    try:
        # NaN/Infinity (not JSON, but Python writes them) would make the apiserver refuse the status patch.
        summary = json.loads(text, parse_constant=lambda _: None)
    except ValueError:
        return None
    return summary if isinstance(summary, dict) else None


def _failure_detail(pods: list[dict[str, Any]]) -> tuple[str, str]:
    """What the newest failed pod says, and its container's reason ("OOMKilled", "Error", ...)."""
    pod = _newest([p for p in pods if (p.get("status") or {}).get("phase") == "Failed"])
    if pod is None:
        return "", ""
    term = _terminated(pod) or {}
    summary = termination_summary([pod], "Failed")
    detail = (summary or {}).get("message") or (term.get("message") or "").strip()
    reason = term.get("reason") or (pod.get("status") or {}).get("reason") or "Error"
    code = term.get("exitCode")
    head = f"pod {pod['metadata']['name']}: {reason}" + (f", exit code {code}" if code is not None else "")
    return (f"{head}: {detail[-1500:]}" if detail else head), term.get("reason") or ""


# The trainer is done and the Job controller has not marked the Job Complete yet.
_FINISHING = Observation("Running", "Finishing", "the trainer finished; the Job is completing")


def observe(job: dict[str, Any] | None, pods: list[dict[str, Any]], queued: bool = False) -> Observation:
    """Where the run is, from the Job and its pods alone."""
    if job is None:
        return Observation("Pending", "JobNotCreated", "the training Job is being created")
    conds = _true_conditions(job)
    if "Complete" in conds:
        return Observation("Succeeded", "Completed", "training finished")
    if "Failed" in conds:
        cond = conds["Failed"]
        detail, container_reason = _failure_detail(pods)
        message = cond.get("message") or cond.get("reason") or "the Job failed"
        message = f"{message}; {detail}" if detail else message
        if container_reason == "OOMKilled":
            # The Job's reason (BackoffLimitExceeded) hides the cause a user can act on.
            return Observation("Failed", "OOMKilled", f"{message}; the trainer used more memory than its limit: "
                               "raise spec.resources.memory, or lower lora.batchSize or lora.maxLength")
        return Observation("Failed", cond.get("reason") or "JobFailed", message)
    # Kubernetes 1.31+ sets these first and the terminal condition once the pods are gone: the run
    # must not flap back to Pending ("waiting for the trainer pod") in between.
    if "SuccessCriteriaMet" in conds:
        return _FINISHING
    if "FailureTarget" in conds:
        return Observation("Running", "Failing", conds["FailureTarget"].get("message") or "the Job is failing")
    if (job.get("spec") or {}).get("suspend"):
        if queued:
            return Observation("Suspended", "Queued", "waiting for admission by Kueue")
        return Observation("Suspended", "Suspended", "the Job is suspended (spec.suspend)")

    live = [p for p in pods if (p.get("status") or {}).get("phase") in (None, "Pending", "Running")
            and not p["metadata"].get("deletionTimestamp")]
    pod = _newest(live)
    failed = (job.get("status") or {}).get("failed") or 0
    retry = f" (retry {failed} after a failed pod)" if failed else ""
    if pod is None:
        if any((p.get("status") or {}).get("phase") == "Succeeded" for p in pods):
            # The pod is done; the Job controller marks the Job Complete a moment later.
            return _FINISHING
        return Observation("Pending", "CreatingPod", "waiting for the trainer pod" + retry)
    status = pod.get("status") or {}
    if status.get("phase") == "Running":
        return Observation("Running", "TrainerRunning", f"pod {pod['metadata']['name']} is running" + retry)
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return Observation("Pending", cond.get("reason") or "Unschedulable", cond.get("message") or "")
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            return Observation("Pending", waiting.get("reason") or "Waiting", waiting.get("message") or "")
    return Observation("Pending", "PodPending", f"pod {pod['metadata']['name']} is pending" + retry)


def set_condition(
    conditions: list[dict[str, Any]], type_: str, status: str, reason: str, message: str,
    now: str, generation: int | None,
) -> list[dict[str, Any]]:
    """Upsert one condition; lastTransitionTime changes only when ``status`` does."""
    out = [dict(c) for c in conditions]
    for cond in out:
        if cond["type"] == type_:
            if cond["status"] != status:
                cond["lastTransitionTime"] = now
            cond.update(status=status, reason=reason, message=message[:1024])
            if generation is not None:
                cond["observedGeneration"] = generation
            return out
    new = {"type": type_, "status": status, "reason": reason, "message": message[:1024],
           "lastTransitionTime": now}
    if generation is not None:
        new["observedGeneration"] = generation
    return [*out, new]


def merge_summary(status: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Fields of the trainer's final summary that the status lacks or has older values of."""
    patch: dict[str, Any] = {}
    for key, value in summary.items():
        if key == "steps":
            current = {s["name"]: s for s in status.get("steps") or []}
            merged = []
            for name in PIPELINE_STEPS:
                step = dict(current.get(name) or {"name": name})
                final = next((s for s in value if s.get("name") == name), None)
                if final:
                    step["state"] = final["state"]
                merged.append(step)
            if merged != status.get("steps"):
                patch["steps"] = merged
        elif key == "lossHistory":
            if len(value) > len(status.get("lossHistory") or []):
                patch[key] = value
        elif status.get(key) != value:
            patch[key] = value
    return patch


def spec_drift(frozen: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Top-level spec fields (besides ``suspend``) whose effective value differs from the frozen spec."""

    def effective(spec: dict[str, Any]) -> dict[str, Any]:
        try:
            return LoraTrainingJobSpec.model_validate(spec).model_dump(by_alias=True, exclude={"suspend"})
        except ValueError:  # an invalid edit still counts as a change
            return {k: v for k, v in spec.items() if k != "suspend"}

    a, b = effective(frozen), effective(current)
    return sorted(k for k in {*a, *b} if a.get(k) != b.get(k))


def _quality_regressed(status: dict[str, Any]) -> tuple[bool, str] | None:
    """The complexity-weighted overall score: the quality number improvements and XP use too."""
    before, after = status.get("before") or {}, status.get("after") or {}
    b, a = before.get("weightedOverall"), after.get("weightedOverall")
    if b is None or a is None:
        return None
    regressed = a < b
    loss_b, loss_a = before.get("evalLoss"), after.get("evalLoss")
    loss = f"; held-out loss {loss_b:.4f} -> {loss_a:.4f}" if loss_b is not None and loss_a is not None else ""
    return regressed, f"weighted overall quality {b:.1f} -> {a:.1f}{loss}"


def _stalled(status: dict[str, Any], phase: str, now: datetime, timeout: int) -> tuple[bool, str]:
    if phase != "Running":
        return False, "not running"
    last = _parse_time(status.get("lastProgressTime")) or _parse_time(status.get("startTime"))
    if last is None:
        return False, "no progress reported yet"
    idle = (now - last).total_seconds()
    if idle > timeout:
        return True, f"no progress for {int(idle)}s (stallTimeoutSeconds={timeout})"
    return False, f"last progress {int(idle)}s ago"


def job_gone(status: dict[str, Any]) -> Observation:
    """The run's Job existed and is gone before the operator saw it end: deleted by hand, or removed by
    ttlSecondsAfterFinished while the operator was away. It is never created again (that would train
    twice); the trainer's own status says whether it finished."""
    job = status["jobName"]
    steps = status.get("steps") or []
    if steps and all(s.get("state") in ("Completed", "Skipped") for s in steps):
        return Observation("Succeeded", "JobRemoved", f"Job {job} was removed after the trainer finished; "
                           "results as the trainer reported them")
    return Observation("Failed", "JobDeleted", f"Job {job} was deleted before it finished; create a new "
                       "LoraTrainingJob to train again")


def reconcile_status(
    status: dict[str, Any],
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    *,
    now: datetime,
    generation: int | None,
    stall_timeout: int,
    queued: bool = False,
) -> tuple[dict[str, Any], list[KubeEvent]]:
    """The status patch (changed fields only) and the events for one look at the world."""
    now_s = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    old_phase = status.get("phase")
    obs = job_gone(status) if job is None and status.get("jobName") and old_phase not in TERMINAL \
        else observe(job, pods, queued)
    if old_phase in TERMINAL:  # a finished run never changes phase again
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
        obs = Observation(old_phase, ready.get("reason") or old_phase, status.get("message") or "")
    patch: dict[str, Any] = {}
    events: list[KubeEvent] = []

    if not status.get("steps"):
        patch.update(progress.initial_status())
    if obs.phase in TERMINAL and old_phase not in TERMINAL:
        summary = termination_summary(pods, obs.phase)
        if summary:
            patch.update(merge_summary({**status, **patch}, summary))
        patch["completionTime"] = now_s
        if obs.phase == "Failed":
            steps = [dict(s) for s in (patch.get("steps") or status.get("steps") or [])]
            for step in steps:
                if step.get("state") == "Active":
                    step.update(state="Failed", endTime=now_s)
            if steps:
                patch["steps"] = steps
    if old_phase != obs.phase:
        patch["phase"] = obs.phase
        if obs.phase == "Running" and not status.get("startTime"):
            patch["startTime"] = now_s
        kind = "Warning" if obs.phase == "Failed" or obs.reason == "Unschedulable" else "Normal"
        events.append(KubeEvent(kind, obs.phase, f"{obs.reason}: {obs.message}" if obs.message else obs.reason))
    if old_phase not in TERMINAL and status.get("message") != obs.message:
        patch["message"] = obs.message
    if job is not None and status.get("jobName") != job["metadata"]["name"]:
        patch["jobName"] = job["metadata"]["name"]

    merged = {**status, **patch}
    phase = merged["phase"]
    conds = list(status.get("conditions") or [])
    ready_reason = "Succeeded" if phase == "Succeeded" else obs.reason
    conds = set_condition(conds, "Ready", "True" if phase == "Succeeded" else "False", ready_reason,
                          obs.message, now_s, generation)
    conds = set_condition(conds, "Running", "True" if phase == "Running" else "False", obs.reason,
                          obs.message, now_s, generation)
    conds = set_condition(conds, "Succeeded", "True" if phase == "Succeeded" else "False", obs.reason,
                          obs.message, now_s, generation)
    conds = set_condition(conds, "Failed", "True" if phase == "Failed" else "False", obs.reason,
                          obs.message if phase == "Failed" else "", now_s, generation)
    stalled, why = _stalled(merged, phase, now, stall_timeout)
    was_stalled = any(c["type"] == "Stalled" and c["status"] == "True" for c in conds)
    conds = set_condition(conds, "Stalled", "True" if stalled else "False",
                          "NoProgress" if stalled else "Progressing", why, now_s, generation)
    if stalled and not was_stalled:
        events.append(KubeEvent("Warning", "Stalled", why))
    quality = _quality_regressed(merged)
    if quality is not None:
        regressed, why = quality
        was_regressed = any(c["type"] == "QualityRegressed" and c["status"] == "True" for c in conds)
        conds = set_condition(conds, "QualityRegressed", "True" if regressed else "False",
                              "AfterWorseThanBefore" if regressed else "NoRegression", why, now_s, generation)
        if regressed and not was_regressed:
            events.append(KubeEvent("Warning", "QualityRegressed", why))
    if conds != status.get("conditions"):
        patch["conditions"] = conds
    if generation is not None and status.get("observedGeneration") != generation:
        patch["observedGeneration"] = generation
    return patch, events
