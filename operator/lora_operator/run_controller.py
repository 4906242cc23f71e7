"""The LoraTrainingJob controller: starts runs, follows their Jobs and pods into the status, restarts broken
groups, and credits ended runs to their minions.

It owns every piece of per-run state the operator keeps (the per-run locks, the endpoint's directory of runs
and pods, the responses to its own status writes, the status writer's queue) and drops all of it in
``forget`` when a run is deleted. The decisions are pure functions (``builders``, ``status``, ``minions``);
the API calls go through ``kube.Kube``; ``handlers`` only routes Kopf's calls here."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from lora_contract import api
from lora_contract.api import Credit, LoraTrainingJobStatus, TrainerStatus
from lora_contract.validation import describe_validation_error
from lora_contract.wire import timestamp
from lora_operator import builders, cache, minions, progress_server
from lora_operator import reasons as R
from lora_operator.kube import ChildRejected, Kube, NamespaceTerminating
from lora_operator.minion_controller import MinionController, MinionGone
from lora_operator.minions import ModelMismatch, ledger_entry
from lora_operator.status import (
    TERMINAL,
    KubeEvent,
    condition_true,
    ephemeral_output,
    group_action,
    group_restart_limit,
    group_restarted,
    parse,
    reconcile_status,
    set_condition,
    spec_drift,
    status_patch,
    xp_refusal,
)
from lora_operator.status_writer import RunKey, StatusWriter

log = logging.getLogger(__name__)
# Kopf's watch-fed indices, by what they hold: (namespace, name) -> the objects cached under that key.
Caches = Mapping[str, Mapping[tuple[str, str], Any]]


class RunController:
    """One per operator process, built at startup and kept in Kopf's memo."""

    def __init__(self, kube: Kube, config: builders.OperatorConfig, minion_controller: MinionController,
                 caches: Caches, *, writes_per_second: float, run_interval: float, minion_wait: float,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.kube, self.config, self.minions, self.caches = kube, config, minion_controller, caches
        self.minion_wait, self.now = minion_wait, now
        self.directory = progress_server.RunDirectory()
        self.written = cache.WrittenRuns()
        self.writer = StatusWriter(self._patch_status, rate=writes_per_second, run_interval=run_interval)
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # --- per-run state ---------------------------------------------------------------------------
    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def forget(self, key: RunKey, endpoint: progress_server.ProgressEndpoint) -> None:
        """A deleted run: everything kept for it goes (an event, not a deletion handler, which would need a
        finalizer)."""
        namespace, name, _ = key
        self.directory.drop_run(namespace, name)
        self.written.forget(namespace, name)
        with self._locks_guard:
            self._locks.pop((namespace, name), None)
        self.writer.forget(key)
        endpoint.forget(key)

    def pod_seen(self, labels: Mapping[str, str], annotations: Mapping[str, str], namespace: str, uid: str,
                 deleted: bool) -> None:
        """The endpoint learns which run each pod may report for from the pod watch, not from a read per
        report; the pod's run is synced."""
        self.directory.set_pod(uid, namespace, None if deleted else builders.reporting_run(labels, annotations))
        owner = labels.get(builders.JOB_LABEL)
        if owner:
            self.sync(namespace, owner)

    def _now_s(self) -> str:
        return timestamp(self.now())

    def _patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.written.remember(self.kube.patch_run_status(namespace, name, patch))

    def change_status(self, namespace: str, name: str, uid: str,
                      change: Callable[[LoraTrainingJobStatus], LoraTrainingJobStatus | None], *,
                      final: bool = False) -> bool:
        """Write ``change`` of the run's status, under the run's lock and on a fresh read: ``sync`` rewrites the
        conditions from its own read, and a handler's ``status`` argument may predate the last write. The run's
        pending report keeps its turn. False when ``change`` had nothing to write."""
        with self._lock(namespace, name):
            old = parse((self.kube.read_run(namespace, name) or {}).get("status"))
            new = change(old)
            if new is None:
                return False
            key = (namespace, name, uid)
            with self.writer.exclusive(key) as held:
                held.put_back()
                self.writer.write(key, status_patch(old, new), final=final)
            return True

    # --- start and spec edits --------------------------------------------------------------------
    def start(self, body: kopf.Body, name: str, namespace: str, spec: kopf.Spec, status: kopf.Status,
              meta: kopf.Meta, logger: logging.Logger, **_: Any) -> None:
        """Validate the spec and create the run's children (idempotent)."""
        if status.get("phase") in TERMINAL:
            return
        try:
            raw = dict(spec)
            if raw.get("minion") and not status.get("jobName"):  # not started yet: it trains the minion's model
                raw = self._inherit(body, namespace, raw)
            parsed = api.LoraTrainingJobSpec.model_validate(raw)
            for obj in builders.children(name, namespace, parsed, self.config):
                if obj["kind"] == "Job" and status.get("jobName"):
                    continue  # created before: never again, even if it is gone (status.job_gone)
                kopf.append_owner_reference(obj, owner=body)
                kopf.adjust_namespace(obj, namespace=namespace)
                self.kube.create(obj, namespace, meta["uid"])
        except (ValidationError, ChildRejected, ModelMismatch) as err:
            message = describe_validation_error(err) if isinstance(err, ValidationError) else str(err)
            self.directory.set_run(namespace, name, meta["uid"], "Failed")
            self.change_status(namespace, name, meta["uid"], lambda old: old.model_copy(update={
                "phase": "Failed", "message": message, "observed_generation": meta.get("generation"),
                "conditions": set_condition(old.conditions, R.FAILED, "True", R.INVALID_SPEC, message,
                                            self._now_s(), meta.get("generation"))}), final=True)
            kopf.event(body, type="Warning", reason=R.INVALID_SPEC, message=message)
            raise kopf.PermanentError(message) from err
        job = builders.job_name(name)
        logger.info("training Job %s is in place", job)
        if status.get("jobName") != job:
            kopf.event(body, type="Normal", reason=R.JOB_CREATED, message=f"created Job {job}")
        self.sync(namespace, name)

    def _inherit(self, body: kopf.Body, namespace: str, raw: dict[str, Any]) -> dict[str, Any]:
        """The spec a run for a minion trains with (``minions.inherit``); while its minion does not exist, the
        run waits in Pending, saying so, and ``start`` is retried."""
        name, uid, wanted = body["metadata"]["name"], body["metadata"]["uid"], raw["minion"]
        found = self.minions.spec(namespace, wanted)
        if found is not None:
            return minions.inherit(wanted, found, raw)
        message = (f"waiting for Minion {wanted} in namespace {namespace}: the run trains that minion's model; "
                   "create the Minion, or delete this run and create it without spec.minion")

        def waiting(old: LoraTrainingJobStatus) -> LoraTrainingJobStatus | None:
            if old.message == message:
                return None
            return old.model_copy(update={"phase": "Pending", "message": message, "conditions": set_condition(
                old.conditions, R.READY, "False", R.MINION_NOT_FOUND, message, self._now_s(), None)})

        if self.change_status(namespace, name, uid, waiting):
            kopf.event(body, type="Warning", reason=R.MINION_NOT_FOUND, message=message)
        raise kopf.TemporaryError(message, delay=self.minion_wait)

    def spec_changed(self, body: kopf.Body, name: str, namespace: str, old: Any, new: Any, status: kopf.Status,
                     meta: kopf.Meta, **_: Any) -> None:
        """Only ``suspend`` reaches a running Job; other edits are reported, not applied."""
        old, new = dict(old or {}), dict(new or {})
        live = status.get("phase") not in TERMINAL
        if old.get("suspend") != new.get("suspend") and live and new.get("queueName"):
            # Kueue owns Job.spec.suspend of a queued run: unsuspending it here would skip admission.
            kopf.event(body, type="Warning", reason=R.SUSPEND_IGNORED, message=(
                "spec.suspend of a queued run (queueName) is not applied: Kueue admits and suspends its Job; "
                "to pause it, deactivate its Workload (kubectl patch workload NAME --type=merge "
                "-p '{\"spec\":{\"active\":false}}')"))
        elif old.get("suspend") != new.get("suspend") and live:
            suspend = bool(new.get("suspend"))
            self.kube.suspend_job(namespace, builders.job_name(name), suspend)
            kopf.event(body, type="Normal", reason=R.SUSPENDED if suspend else R.RESUMED,
                       message=f"Job {builders.job_name(name)} {'suspended' if suspend else 'resumed'}")
        frozen = self.kube.frozen_spec(namespace, name)
        if frozen is None:  # no run was started (an invalid spec): there is nothing to compare with
            return
        drift = spec_drift(frozen, self._effective(namespace, new))
        message = (f"spec fields {', '.join(drift)} differ from the spec this run started with and are not "
                   "applied; create a new LoraTrainingJob to train with them") if drift else \
            "the spec matches the one this run started with again"

        def report_drift(old: LoraTrainingJobStatus) -> LoraTrainingJobStatus | None:
            if not drift and not condition_true(old, R.SPEC_CHANGE_IGNORED):
                return None
            return old.model_copy(update={"conditions": set_condition(
                old.conditions, R.SPEC_CHANGE_IGNORED, "True" if drift else "False",
                R.IMMUTABLE_AFTER_START if drift else R.SPEC_RESTORED, message, self._now_s(),
                meta.get("generation"))})

        if self.change_status(namespace, name, meta["uid"], report_drift) and drift:
            kopf.event(body, type="Warning", reason=R.SPEC_CHANGE_IGNORED, message=message)
        self.sync(namespace, name)

    def _effective(self, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
        """A run's spec as it would train now: with its minion's model and settings (the frozen spec has them)."""
        found = self.minions.spec(namespace, spec["minion"]) if spec.get("minion") else None
        try:
            return minions.inherit(spec["minion"], found, spec) if found else spec
        except ModelMismatch:
            return spec

    # --- crediting -------------------------------------------------------------------------------
    def credit(self, body: kopf.Body, name: str, namespace: str, spec: kopf.Spec, status: kopf.Status,
               meta: kopf.Meta, **_: Any) -> None:
        """Credit an ended run to its minion, once: the minion's ledger is keyed by run UID, and the run records
        the credit (status.credited) after the minion holds it, so an operator stopped in between credits
        nothing twice. A failed run is credited too, with 0 XP and why."""
        wanted, uid = spec["minion"], meta["uid"]
        entry = ledger_entry(name, uid, parse(dict(status)))
        try:
            done = self.minions.credit(namespace, wanted, entry)
        except MinionGone as err:
            raise kopf.TemporaryError(f"{err}: the run's {entry.xp} XP are credited once it exists again",
                                      delay=self.minion_wait) from err
        self.change_status(namespace, name, uid, lambda old: None if old.credited else old.model_copy(update={
            "credited": Credit(minion=wanted, xp=entry.xp, time=self._now_s())}))
        if done.status is None:  # credited before the operator could record it on the run
            return
        kopf.event(body, type="Normal", reason=R.CREDITED, message=(
            f"{entry.xp} XP credited to Minion {wanted}: level {done.status.level}, {done.status.xp} XP in total"))
        if done.status.level > done.level_before:
            kopf.event(done.minion, type="Normal", reason=R.LEVEL_UP, message=(
                f"level {done.level_before} -> {done.status.level} with run {name} ({entry.xp} XP; "
                f"{done.status.xp} XP in total)"))

    # --- the status from the Job and its pods ----------------------------------------------------
    def _create_job_again(self, run: dict[str, Any]) -> bool:
        """Create a run's Job again, from the spec it started with (its ConfigMap): a group restart must not apply
        edits made since. False when it could not (the next sync tries again)."""
        namespace, name = run["metadata"]["namespace"], run["metadata"]["name"]
        try:
            spec = api.LoraTrainingJobSpec.model_validate(self.kube.frozen_spec(namespace, name))
            obj = builders.job(name, namespace, spec, self.config)
            kopf.append_owner_reference(obj, owner=run)
            self.kube.create(obj, namespace, run["metadata"]["uid"])
        except NamespaceTerminating as err:  # the run goes with its namespace: nothing to restart
            log.debug("not creating Job %s/%s again: %s", namespace, builders.job_name(name), err)
            return False
        except (ApiException, kopf.TemporaryError, ChildRejected, ValidationError) as err:
            log.warning("creating Job %s/%s again for a group restart: %s", namespace, builders.job_name(name), err)
            return False
        return True

    def _delete_job(self, namespace: str, job: str) -> None:
        try:
            self.kube.delete_job(namespace, job)
        except ApiException as err:
            log.warning("deleting Job %s/%s for a group restart: %s", namespace, job, err)

    def sync(self, namespace: str, name: str) -> None:
        """Re-derive phase and conditions from the cached Job and its pods and write what changed."""
        with self._lock(namespace, name):
            watched = cache.pick(self.caches["runs"].get((namespace, name)))
            if watched is None or watched["metadata"].get("deletionTimestamp"):
                return
            key: RunKey = (namespace, name, watched["metadata"]["uid"])
            # Inside: a report write of this run in flight has finished, and ``written`` has its response.
            with self.writer.exclusive(key) as held:
                obj = self.written.newest(watched)
                spec = obj.get("spec") or {}
                old = parse(obj.get("status"))
                job_name = builders.job_name(name)
                job = cache.pick(self.caches["jobs"].get((namespace, job_name)))
                if job is None and old.phase not in TERMINAL:
                    # Maybe created a moment ago and not delivered yet: a miss alone must not end the run.
                    job = self.kube.read_job(namespace, job_name)
                pods = list(self.caches["pods"].get((namespace, job_name)) or ())
                stall = int((spec.get("runtime") or {}).get("stallTimeoutSeconds") or 900)
                seen = old if held.report is None else \
                    old.model_copy(update={"trainer": TrainerStatus.model_validate(held.report)})

                def derive(pods: list[dict[str, Any]]) -> tuple[LoraTrainingJobStatus, list[KubeEvent]]:
                    return reconcile_status(
                        seen, job, _owned(pods, job), now=self.now(), generation=obj["metadata"].get("generation"),
                        stall_timeout=stall, queued=bool(spec.get("queueName")),
                        xp_refused=xp_refusal(spec, self.config.untrusted_image(spec.get("image"))),
                        ephemeral_output=ephemeral_output(spec), group_restarts=group_restart_limit(spec))

                new, events = derive(pods)
                action = group_action(new, job)
                if action == "delete":
                    self._delete_job(namespace, job_name)
                elif action == "create" and self._create_job_again(obj):
                    new = group_restarted(new, self._now_s(), obj["metadata"].get("generation"))
                if new.phase in TERMINAL and seen.phase not in TERMINAL:
                    # The final summary is the ended pod's termination message: read it as it is now, since the
                    # pod watch may trail the Job's.
                    new, events = derive(self.kube.list_pods(namespace, job_name))
                self.directory.set_run(namespace, name, key[2], new.phase)
                final = new.phase in TERMINAL
                if status_patch(seen, new) or final:  # the report rides along with a write made anyway
                    self.writer.write(key, status_patch(old, new), final=final)
                else:  # nothing of its own to write: the report waits for its run's turn (the per-run interval)
                    held.put_back()
            for event in events:
                kopf.event(obj, type=event.type, reason=event.reason, message=event.message)


def _owned(pods: list[dict[str, Any]], job: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The pods of ``job`` itself: a group restart creates a Job of the same name, whose pods the watch may
    deliver before the old pods' deletions."""
    if job is None:
        return pods
    uid = job["metadata"].get("uid")
    return [p for p in pods if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or ())]
