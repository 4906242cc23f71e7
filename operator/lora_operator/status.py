"""Pure status logic of the operator: Job and Pod state in, a new status and events out.

The operator is the only writer of the status. It owns ``phase``, ``conditions``, ``message``,
``xp``, ``jobName`` and the timestamps, and keeps what the trainer reports in ``trainer``
(``progress_server`` accepts the reports). At the end it also merges the trainer's final
summary from the pod's termination message, validated like a report, so a run whose last
report never arrived still ends with its metrics; and it awards XP for a Succeeded run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from lora_contract import progress
from lora_contract.api import (
    PIPELINE_STEPS,
    Condition,
    LoraTrainingJobSpec,
    LoraTrainingJobStatus,
    Phase,
    TrainerStatus,
)
from lora_contract.wire import EXIT_INTERRUPTED, EXIT_INVALID_INPUT, timestamp
from lora_contract.xp import xp_for
from lora_operator import builders
from lora_operator import reasons as R

TERMINAL: frozenset[str] = frozenset({"Succeeded", "Failed"})


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


def termination_summary(pods: list[dict[str, Any]], phase: str) -> TrainerStatus | None:
    """The trainer's final summary from the newest rank-0 pod that ended in ``phase``, validated like a report
    (anything else in the termination message, such as a log tail, is not a summary)."""
    ended = [p for p in pods if (p.get("status") or {}).get("phase") == phase
             and builders.runs_rank_0(p["metadata"].get("annotations"))]
    pod = _newest(ended)
    term = _terminated(pod) if pod else None
    text = (term or {}).get("message") or ""
    try:
        # NaN/Infinity (not JSON, but Python writes them) become null rather than costing the whole summary.
        return TrainerStatus.model_validate(json.loads(text, parse_constant=lambda _: None))
    except (ValueError, ValidationError):
        return None


def _failure_detail(pods: list[dict[str, Any]]) -> tuple[str, str]:
    """What the newest failed pod says, and its container's reason ("OOMKilled", "Error", ...)."""
    pod = _newest([p for p in pods if (p.get("status") or {}).get("phase") == "Failed"])
    if pod is None:
        return "", ""
    term = _terminated(pod) or {}
    summary = termination_summary([pod], "Failed")
    detail = (summary.message if summary else None) or (term.get("message") or "").strip()
    reason = term.get("reason") or (pod.get("status") or {}).get("reason") or "Error"
    code = term.get("exitCode")
    head = f"pod {pod['metadata']['name']}: {reason}" + (f", exit code {code}" if code is not None else "")
    return (f"{head}: {detail[-1500:]}" if detail else head), term.get("reason") or ""


# The trainer is done and the Job controller has not marked the Job Complete yet.
_FINISHING = Observation("Running", R.FINISHING, "the trainer finished; the Job is completing")

# The Job controller's finalizer on its pods: it stays until the controller has counted the pod's end.
_TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"


def _uncounted_failure(job: dict[str, Any], pod: dict[str, Any]) -> bool:
    """A failed pod the Job controller has not acted on: it names the pod in ``uncountedTerminatedPods``
    in the same status write that says whether the Job fails (FailureTarget), before it drops the finalizer."""
    if (pod.get("status") or {}).get("phase") != "Failed" or \
            _TRACKING_FINALIZER not in (pod["metadata"].get("finalizers") or ()):
        return False
    uncounted = ((job.get("status") or {}).get("uncountedTerminatedPods") or {}).get("failed") or ()
    return pod["metadata"].get("uid") not in uncounted


def _retry_note(job: dict[str, Any], pods: list[dict[str, Any]]) -> str:
    """Why there is a new pod: failed ones (counted against backoffLimit), or the newest ended pod stopped by a
    signal after saving a checkpoint (a disruption the Job does not count: a user would see no cause)."""
    failed = (job.get("status") or {}).get("failed") or 0
    note = f"retry {failed} after a failed pod" if failed else ""
    ended = _newest([p for p in pods if (p.get("status") or {}).get("phase") == "Failed"])
    if ended and (_terminated(ended) or {}).get("exitCode") == EXIT_INTERRUPTED:
        stopped = f"pod {ended['metadata']['name']} was stopped by SIGTERM; the retry resumes from its checkpoint"
        note = f"{note}; {stopped}" if note else stopped
    return f" ({note})" if note else ""


def observe(job: dict[str, Any] | None, pods: list[dict[str, Any]], queued: bool = False) -> Observation | None:
    """Where the run is, from the Job and its pods alone; None while they say nothing new (a pod failed and
    the Job controller has yet to decide between a retry and failing the Job)."""
    if job is None:
        return Observation("Pending", R.JOB_NOT_CREATED, "the training Job is being created")
    conds = _true_conditions(job)
    if "Complete" in conds:
        return Observation("Succeeded", R.COMPLETED, "training finished")
    if "Failed" in conds:
        cond = conds["Failed"]
        detail, container_reason = _failure_detail(pods)
        message = cond.get("message") or cond.get("reason") or "the Job failed"
        message = f"{message}; {detail}" if detail else message
        if container_reason == R.OOM_KILLED:
            # The Job's reason (BackoffLimitExceeded) hides the cause a user can act on.
            return Observation("Failed", R.OOM_KILLED, f"{message}; the trainer used more memory than its limit: "
                               "raise spec.resources.memory, or lower lora.batchSize or lora.maxLength")
        return Observation("Failed", cond.get("reason") or R.JOB_FAILED, message)
    # Kubernetes 1.31+ sets these first and the terminal condition once the pods are gone: the run
    # must not flap back to Pending ("waiting for the trainer pod") in between.
    if "SuccessCriteriaMet" in conds:
        return _FINISHING
    if "FailureTarget" in conds:
        return Observation("Running", R.FAILING, conds["FailureTarget"].get("message") or "the Job is failing")
    if (job.get("spec") or {}).get("suspend"):
        if queued:
            return Observation("Suspended", R.QUEUED, "waiting for admission by Kueue")
        return Observation("Suspended", R.SUSPENDED, "the Job is suspended (spec.suspend)")

    # A pod being deleted counts until it has stopped: the Job controller deletes the pod of a Job past its
    # deadline before it writes FailureTarget, and replaces a deleted pod only once it has failed.
    live = [p for p in pods if (p.get("status") or {}).get("phase") in (None, "Pending", "Running")]
    pod = _newest(live)
    retry = _retry_note(job, pods)
    if pod is None:
        if any((p.get("status") or {}).get("phase") == "Succeeded" for p in pods):
            # The pod is done; the Job controller marks the Job Complete a moment later.
            return _FINISHING
        if any(_uncounted_failure(job, p) for p in pods):
            return None
        return Observation("Pending", R.CREATING_POD, "waiting for the trainer pod" + retry)
    status = pod.get("status") or {}
    if status.get("phase") == "Running":
        deleting = "; it is being deleted" if pod["metadata"].get("deletionTimestamp") else ""
        return Observation("Running", R.TRAINER_RUNNING,
                           f"pod {pod['metadata']['name']} is running" + retry + deleting)
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return Observation("Pending", cond.get("reason") or R.UNSCHEDULABLE, cond.get("message") or "")
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            return Observation("Pending", waiting.get("reason") or R.WAITING, waiting.get("message") or "")
    return Observation("Pending", R.POD_PENDING, f"pod {pod['metadata']['name']} is pending" + retry)


def set_condition(conditions: list[Condition], type_: str, status: str, reason: str, message: str,
                  now: str, generation: int | None) -> list[Condition]:
    """Upsert one condition; lastTransitionTime changes only when ``status`` does."""
    out = [c.model_copy() for c in conditions]
    for cond in out:
        if cond.type == type_:
            if cond.status != status:
                cond.last_transition_time = now
            cond.status, cond.reason, cond.message = status, reason, message[:1024]  # type: ignore[assignment]
            if generation is not None:
                cond.observed_generation = generation
            return out
    return [*out, Condition(type=type_, status=status, reason=reason, message=message[:1024],  # type: ignore[arg-type]
                            last_transition_time=now, observed_generation=generation)]


def condition_true(status: LoraTrainingJobStatus, type_: str) -> bool:
    return any(c.type == type_ and c.status == "True" for c in status.conditions)


def merge_summary(trainer: TrainerStatus | None, summary: TrainerStatus) -> TrainerStatus:
    """The reported state with the final summary's fields laid over it (the summary is the newest word);
    step states by name, and the longer loss history."""
    merged = (trainer or progress.initial_status()).model_copy(deep=True)
    for field in summary.model_fields_set - {"steps", "loss_history"}:
        setattr(merged, field, getattr(summary, field))
    final = {s.name: s.state for s in summary.steps}
    current = {s.name: s for s in merged.steps}
    merged.steps = [current.get(name) or progress.StepStatus(name=name) for name in PIPELINE_STEPS]
    for step in merged.steps:
        step.state = final.get(step.name, step.state)
    if len(summary.loss_history) > len(merged.loss_history):
        merged.loss_history = summary.loss_history
    return merged


def spec_drift(frozen: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Top-level spec fields (besides ``suspend``) whose effective value differs from the frozen spec."""

    def effective(spec: dict[str, Any]) -> dict[str, Any]:
        try:
            return LoraTrainingJobSpec.model_validate(spec).model_dump(by_alias=True, exclude={"suspend"})
        except ValueError:  # an invalid edit still counts as a change
            return {k: v for k, v in spec.items() if k != "suspend"}

    a, b = effective(frozen), effective(current)
    return sorted(k for k in {*a, *b} if a.get(k) != b.get(k))


def _quality_regressed(trainer: TrainerStatus | None) -> tuple[bool, str] | None:
    """The complexity-weighted overall score: the quality number improvements and XP use too."""
    if trainer is None or trainer.before is None or trainer.after is None:
        return None
    b, a = trainer.before.weighted_overall, trainer.after.weighted_overall
    if b is None or a is None:
        return None
    loss_b, loss_a = trainer.before.eval_loss, trainer.after.eval_loss
    loss = f"; held-out loss {loss_b:.4f} -> {loss_a:.4f}" if loss_b is not None and loss_a is not None else ""
    return a < b, f"weighted overall quality {b:.1f} -> {a:.1f}{loss}"


def _stalled(status: LoraTrainingJobStatus, now: datetime, timeout: int) -> tuple[bool, str]:
    if status.phase != "Running":
        return False, "not running"
    last = _parse_time(status.trainer.last_progress_time if status.trainer else None) \
        or _parse_time(status.start_time)
    if last is None:
        return False, "no progress reported yet"
    idle = (now - last).total_seconds()
    if idle > timeout:
        return True, f"no progress for {int(idle)}s (stallTimeoutSeconds={timeout})"
    # No changing number here: an unchanged condition costs no status write.
    return False, f"progress reported within stallTimeoutSeconds={timeout}"


def job_gone(status: LoraTrainingJobStatus) -> Observation:
    """The run's Job existed and is gone before the operator saw it end: deleted by hand, or removed by
    ttlSecondsAfterFinished while the operator was away. It is never created again (that would train
    twice); the trainer's reports say whether it finished."""
    job = status.job_name
    steps = status.trainer.steps if status.trainer else []
    if steps and all(s.state in ("Completed", "Skipped") for s in steps):
        return Observation("Succeeded", R.JOB_REMOVED, f"Job {job} was removed after the trainer finished; "
                           "results as the trainer reported them")
    return Observation("Failed", R.JOB_DELETED, f"Job {job} was deleted before it finished; create a new "
                       "LoraTrainingJob to train again")


def _group_broke(job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> bool:
    """The Job of a run over several pods failed by the rule for a worker that died (builders.job), not for
    invalid input (exit code 2, which every retry would repeat)."""
    cond = _true_conditions(job or {}).get("Failed")
    return bool(cond) and cond.get("reason") == "PodFailurePolicy" and not any(
        (_terminated(p) or {}).get("exitCode") == EXIT_INVALID_INPUT for p in pods)


def _restart_group(new: LoraTrainingJobStatus, obs: Observation, limit: int, now_s: str,
                   generation: int | None) -> tuple[Observation, list[KubeEvent]]:
    """A broken group (``_group_broke``): start a restart while ``limit`` allows, else fail saying so."""
    done = new.group_restarts or 0
    if done >= limit:
        return Observation("Failed", obs.reason, f"{obs.message}; the group was restarted {done} times "
                           "(runtime.backoffLimit)"), []
    new.group_restarts = done + 1
    message = f"restart {done + 1} of {limit}, from the newest checkpoint: {obs.message}"
    new.conditions = set_condition(new.conditions, R.GROUP_RESTARTING, "True", R.WORKER_DIED, message, now_s,
                                   generation)
    return Observation("Running", R.GROUP_RESTARTING, message), [KubeEvent("Warning", R.GROUP_RESTARTING, message)]


def _waiting_for_minion(status: LoraTrainingJobStatus) -> bool:
    """The run names a minion that does not exist yet: ``start`` said so and retries; no Job exists."""
    return any(c.type == R.READY and c.reason == R.MINION_NOT_FOUND for c in status.conditions)


def group_restart_limit(spec: dict[str, Any]) -> int:
    """How often a run over several pods may be restarted as a whole: its backoffLimit (0 for one pod)."""
    parsed = LoraTrainingJobSpec.model_construct()  # the defaults, without validating the whole spec
    nodes = (spec.get("resources") or {}).get("nodes") or parsed.resources.nodes
    limit = (spec.get("runtime") or {}).get("backoffLimit")
    return (parsed.runtime.backoff_limit if limit is None else int(limit)) if nodes > 1 else 0


def group_action(status: LoraTrainingJobStatus, job: dict[str, Any] | None) -> str | None:
    """What the operator must do for a group restart under way (condition GroupRestarting): ``delete`` the
    failed Job (its pods first: the new pods take their names), ``create`` the Job again once it is gone,
    or nothing (no restart, or the deletion is in progress)."""
    if not condition_true(status, R.GROUP_RESTARTING):
        return None
    if job is None:
        return "create"
    return None if job["metadata"].get("deletionTimestamp") else "delete"


def group_restarted(status: LoraTrainingJobStatus, now_s: str, generation: int | None) -> LoraTrainingJobStatus:
    """The status once the operator has created the group's Job again."""
    message = f"the group was restarted as a whole ({status.group_restarts} times)"
    return status.model_copy(update={"message": f"{message}; waiting for its pods", "conditions": set_condition(
        status.conditions, R.GROUP_RESTARTING, "False", R.GROUP_RESTARTED, message, now_s, generation)})


def ephemeral_output(spec: dict[str, Any]) -> bool:
    """Whether a run's results die with its pod: neither output.claimName nor output.destinations."""
    output = spec.get("output") or {}
    return not (output.get("claimName") or output.get("destinations"))


EPHEMERAL_MESSAGE = ("output has no claimName and no destinations: the adapter and merged model are written to an "
                     "emptyDir and deleted with the trainer pod (the metrics still reach this status); set "
                     "output.destinations or output.claimName to keep them (docs/artifacts.md)")


def xp_refusal(spec: dict[str, Any], untrusted_image: str | None) -> tuple[str, str] | None:
    """(reason, message) when a run must earn no XP whatever it reports, else None: its image is not one the
    operator trusts to report honestly, or it runs model code from the hub (``model.trustRemoteCode``), which
    docs/architecture.md counts as hostile: that code runs inside the trainer and could write any report."""
    if untrusted_image is not None:
        return R.UNTRUSTED_IMAGE, (f"image {untrusted_image} is not one of the operator's trusted trainer images "
                                   "(chart value trainer.trustedImages): the run trains and reports, but earns no XP")
    if ((spec.get("model") or {}).get("trustRemoteCode")) is True:
        return R.REMOTE_CODE, ("model.trustRemoteCode runs the model's own code from the hub inside the trainer, "
                               "where it could write any report: the run trains and reports, but earns no XP")
    return None


def _award(status: LoraTrainingJobStatus, refused: tuple[str, str] | None) -> tuple[str, str, str] | None:
    """XP for a Succeeded run, and the XPAwarded condition (status, reason, message); None while there is
    nothing to say yet."""
    if refused is not None:
        status.xp = None
        return "False", *refused
    if status.phase == "Failed":
        status.xp = None
        return "False", R.NOT_SUCCEEDED, "only a Succeeded run earns XP"
    if status.phase != "Succeeded" or status.trainer is None:
        return None
    status.xp = xp_for(status.trainer)
    if status.xp is None:
        return "False", R.NOT_SUCCEEDED, "the trainer reported no training items"
    return "True", R.AWARDED, f"{status.xp} XP for {status.trainer.train_items} distinct training items"


def reconcile_status(
    status: LoraTrainingJobStatus,
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    *,
    now: datetime,
    generation: int | None,
    stall_timeout: int,
    queued: bool = False,
    xp_refused: tuple[str, str] | None = None,
    ephemeral_output: bool = False,
    group_restarts: int = 0,
) -> tuple[LoraTrainingJobStatus, list[KubeEvent]]:
    """The new status and the events for one look at the world (``status`` is not modified).

    ``xp_refused`` (``xp_refusal``) says why the run earns no XP whatever it reports; ``ephemeral_output``, that
    its results have nowhere to go but the pod's emptyDir (``OutputSpec.persistent``); ``group_restarts``, how
    often a run over several pods may be restarted as a whole after a worker died (0: not such a run)."""
    now_s = timestamp(now)
    old_phase = status.phase
    new = status.model_copy(deep=True)
    events: list[KubeEvent] = []
    restarting = next((c for c in status.conditions if c.type == R.GROUP_RESTARTING and c.status == "True"), None)
    if restarting is not None and old_phase not in TERMINAL:
        # The failed group's Job is being deleted or created again (group_action): no news about the run.
        obs: Observation | None = Observation("Running", R.GROUP_RESTARTING, restarting.message)
    elif job is None and status.job_name and old_phase not in TERMINAL:
        obs = job_gone(status)
    elif job is None and _waiting_for_minion(status):
        obs = Observation("Pending", R.MINION_NOT_FOUND, status.message or "")
    else:
        obs = observe(job, pods, queued)
        if obs is not None and obs.phase == "Failed" and group_restarts and _group_broke(job, pods):
            obs, events = _restart_group(new, obs, group_restarts, now_s, generation)
    if old_phase in TERMINAL or obs is None:  # a finished run never changes phase again; no news changes nothing
        ready = next((c for c in status.conditions if c.type == R.READY), None)
        kept = old_phase or "Pending"
        obs = Observation(kept, ready.reason if ready else kept, status.message or "")

    if new.trainer is None:
        new.trainer = progress.initial_status()
    if obs.phase in TERMINAL and old_phase not in TERMINAL:
        summary = termination_summary(pods, obs.phase)
        if summary:
            new.trainer = merge_summary(new.trainer, summary)
        new.completion_time = now_s
        if obs.phase == "Failed":
            for step in new.trainer.steps:
                if step.state == "Active":
                    step.state, step.end_time = "Failed", now_s
    if old_phase != obs.phase:
        new.phase = obs.phase
        if obs.phase == "Running" and not status.start_time:
            new.start_time = now_s
        kind = "Warning" if obs.phase == "Failed" or obs.reason == R.UNSCHEDULABLE else "Normal"
        events.append(KubeEvent(kind, obs.phase, f"{obs.reason}: {obs.message}" if obs.message else obs.reason))
    if old_phase not in TERMINAL:
        new.message = obs.message
    if job is not None:
        new.job_name = job["metadata"]["name"]

    phase = new.phase

    def cond(type_: str, true: bool, reason: str, message: str) -> None:
        new.conditions = set_condition(new.conditions, type_, "True" if true else "False", reason, message,
                                       now_s, generation)

    cond(R.READY, phase == "Succeeded", "Succeeded" if phase == "Succeeded" else obs.reason, obs.message)
    cond(R.RUNNING, phase == "Running", obs.reason, obs.message)
    cond(R.SUCCEEDED, phase == "Succeeded", obs.reason, obs.message)
    cond(R.FAILED, phase == "Failed", obs.reason, obs.message if phase == "Failed" else "")
    stalled, why = _stalled(new, now, stall_timeout)
    was_stalled = condition_true(status, R.STALLED)
    cond(R.STALLED, stalled, R.NO_PROGRESS if stalled else R.PROGRESSING, why)
    if stalled and not was_stalled:
        events.append(KubeEvent("Warning", R.STALLED, why))
    quality = _quality_regressed(new.trainer)
    if quality is not None:
        regressed, why = quality
        cond(R.QUALITY_REGRESSED, regressed, R.AFTER_WORSE_THAN_BEFORE if regressed else R.NO_REGRESSION, why)
        if regressed and not condition_true(status, R.QUALITY_REGRESSED):
            events.append(KubeEvent("Warning", R.QUALITY_REGRESSED, why))
    if ephemeral_output and not condition_true(status, R.ARTIFACTS_EPHEMERAL):
        cond(R.ARTIFACTS_EPHEMERAL, True, R.NO_PERSISTENT_OUTPUT, EPHEMERAL_MESSAGE)
        events.append(KubeEvent("Warning", R.ARTIFACTS_EPHEMERAL, EPHEMERAL_MESSAGE))
    if old_phase not in TERMINAL or xp_refused is not None:
        award = _award(new, xp_refused)
        if award is not None:
            cond(R.XP_AWARDED, award[0] == "True", award[1], award[2])
            if award[0] == "True" and not condition_true(status, R.XP_AWARDED):
                events.append(KubeEvent("Normal", R.AWARDED, award[2]))
    if generation is not None:
        new.observed_generation = generation
    return new, events


def status_patch(old: LoraTrainingJobStatus, new: LoraTrainingJobStatus) -> dict[str, Any]:
    """The merge patch from ``old`` to ``new``: changed top-level fields, whole (the API edge)."""
    a, b = dump(old), dump(new)
    return {k: v for k, v in b.items() if a.get(k) != v}


def dump(status: LoraTrainingJobStatus) -> dict[str, Any]:
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def parse(status: dict[str, Any] | None) -> LoraTrainingJobStatus:
    return LoraTrainingJobStatus.model_validate(status or {})
