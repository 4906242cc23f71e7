"""Kopf wiring only: each handler reads, calls a pure function, and writes.

Logic lives in ``builders`` (spec -> objects) and ``status`` (Job/Pods -> status). ``sync`` reads runs, Jobs
and Pods from the watch-fed indices (``cache`` says when it reads the API instead). Every status write
goes through one ``StatusWriter`` (the write budget); trainer reports arrive at ``progress_server``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from lora_contract import api, minion
from lora_contract.api import Credit, LoraTrainingJobStatus, TrainerStatus
from lora_contract.validation import describe_validation_error
from lora_contract.wire import timestamp
from lora_operator import builders, cache, minions, progress_server
from lora_operator import reasons as R
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

CONFIG = builders.OperatorConfig.from_env()
# How often each live run's status is re-derived even without Job/Pod events (Stalled).
SYNC_INTERVAL = float(os.environ.get("LORA_SYNC_INTERVAL_SECONDS", "30"))
_CHILD_SELECTOR = {"app.kubernetes.io/managed-by": builders.MANAGED_BY}
# How often a run waiting for its minion looks again, and a finished run's credit is tried.
MINION_WAIT_SECONDS = float(os.environ.get("LORA_MINION_WAIT_SECONDS", "10"))
CREDIT_INTERVAL = float(os.environ.get("LORA_CREDIT_INTERVAL_SECONDS", "5"))
PROGRESS_PORT = int(os.environ.get("LORA_PROGRESS_PORT", "8443"))
TLS_DIR = Path(os.environ.get("LORA_PROGRESS_TLS_DIR", builders.DEFAULT_TLS_DIR))
DIRECTORY = progress_server.RunDirectory()
_locks: dict[tuple[str, str], threading.Lock] = {}
# The indices below, by what they hold, as ``configure`` receives them (Kopf hands indices to handlers only).
_CACHES: dict[str, kopf.Index[tuple[str, str], dict[str, Any]]] = {}
WRITTEN = cache.WrittenRuns()
_locks_guard = threading.Lock()


def _now() -> datetime:
    return datetime.now(UTC)


def _now_s() -> str:
    return timestamp(_now())


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, run_objects: kopf.Index,
                    job_objects: kopf.Index, pod_objects: kopf.Index, **_: Any) -> None:
    _CACHES.update(runs=run_objects, jobs=job_objects, pods=pod_objects)
    # Annotations only: status belongs to the API, and Argo CD ignores annotations it did not set.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration")
    # Only Kopf's warnings and errors become Events; ours are explicit kopf.event calls.
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = f"{api.GROUP}/finalizer"
    settings.watching.server_timeout = 300
    # Let the apiserver filter: without this the operator would stream every Job and Pod.
    selector = ",".join(f"{k}={v}" for k, v in _CHILD_SELECTOR.items())
    settings.watching.label_selectors["batch", "v1", "jobs"] = selector
    settings.watching.label_selectors["", "v1", "pods"] = selector
    # In a pod: its ServiceAccount, without load_config()'s warning that no ~/.kube/config exists.
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        kubernetes.config.load_incluster_config()
    else:
        kubernetes.config.load_kube_config()
    context = progress_server.tls_context(TLS_DIR)
    WRITER.start()
    endpoint = progress_server.ProgressEndpoint(progress_server.Reviewer(_token_review), DIRECTORY, WRITER,
                                                _read_pod_run)
    memo.endpoint = endpoint
    memo.minions = MinionController(_custom, _now_s)
    memo.runner = await progress_server.serve(endpoint, PROGRESS_PORT, context)
    memo.certificate = asyncio.create_task(progress_server.keep_certificate_fresh(context, TLS_DIR))


@kopf.on.cleanup()
async def shut_down(memo: kopf.Memo, **_: Any) -> None:
    memo.certificate.cancel()
    await memo.runner.cleanup()
    WRITER.stop()


@functools.cache
def _client() -> kubernetes.client.ApiClient:
    """One client (and so one connection pool) for every call: a new one per call costs a TCP and TLS
    handshake each time, which under load was a third of the operator's busy time."""
    return kubernetes.client.ApiClient()


def _token_review(token: str) -> dict[str, Any]:
    body = kubernetes.client.V1TokenReview(
        spec=kubernetes.client.V1TokenReviewSpec(token=token, audiences=[builders.TOKEN_AUDIENCE]))
    review = kubernetes.client.AuthenticationV1Api(_client()).create_token_review(body)
    return _client().sanitize_for_serialization(review)


def _read_pod_run(namespace: str, pod: str) -> str | None:
    try:
        found = kubernetes.client.CoreV1Api(_client()).read_namespaced_pod(pod, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return builders.reporting_run(found.metadata.labels, found.metadata.annotations)


def _custom() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(_client())


def _patch_status(namespace: str, name: str, patch: dict[str, Any]) -> None:
    WRITTEN.remember(_custom().patch_namespaced_custom_object_status(
        api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": patch}))


WRITER = StatusWriter(_patch_status, rate=float(os.environ.get("LORA_STATUS_WRITES_PER_SECOND", "20")),
                      run_interval=float(os.environ.get("LORA_STATUS_RUN_INTERVAL_SECONDS", "5")))


def _change_status(namespace: str, name: str, uid: str,
                   change: Callable[[LoraTrainingJobStatus], LoraTrainingJobStatus | None], *,
                   final: bool = False) -> bool:
    """Write ``change`` of the run's status, under the run's lock and on a fresh read: ``sync`` rewrites the
    conditions from its own read, and a handler's ``status`` argument may predate the last write. The run's
    pending report keeps its turn. False when ``change`` had nothing to write."""
    with _lock(namespace, name):
        old = parse((_read_run(namespace, name) or {}).get("status"))
        new = change(old)
        if new is None:
            return False
        key = (namespace, name, uid)
        with WRITER.exclusive(key) as held:
            held.put_back()
            WRITER.write(key, status_patch(old, new), final=final)
        return True


class ChildRejected(Exception):
    """The apiserver refused a child built from this spec as invalid: retrying the same spec cannot help."""


def _create(obj: dict[str, Any], namespace: str, owner_uid: str) -> None:
    """Create, or accept an existing object we own: an operator restart creates nothing twice."""
    client = _client()
    try:
        kubernetes.utils.create_from_dict(client, obj, namespace=namespace)
    except kubernetes.utils.FailToCreateError as err:
        exc = err.api_exceptions[0]
        if exc.status == 422:
            try:
                detail = json.loads(exc.body).get("message") or exc.body
            except (TypeError, ValueError):
                detail = exc.body
            raise ChildRejected(f"the {obj['kind']} built from this spec is invalid: {detail}") from err
        if exc.status != 409:
            raise kopf.TemporaryError(f"creating {obj['kind']} {obj['metadata']['name']}: {exc.reason}: "
                                      f"{exc.body}", delay=10) from err
        existing = _read(obj, namespace)
        owners = [o.get("uid") for o in existing.get("metadata", {}).get("ownerReferences") or []]
        if owner_uid not in owners:
            raise kopf.TemporaryError(
                f"{obj['kind']} {obj['metadata']['name']} exists and belongs to another owner "
                "(a deleted run with the same name is still being cleaned up)", delay=15) from err


@functools.cache
def _dynamic() -> kubernetes.dynamic.DynamicClient:
    # Built once: constructing it runs API discovery, several requests.
    return kubernetes.dynamic.DynamicClient(_client())


def _read(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    resource = _dynamic().resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    return resource.get(name=obj["metadata"]["name"], namespace=namespace).to_dict()


@kopf.on.resume(api.GROUP, api.VERSION, api.PLURAL)
@kopf.on.create(api.GROUP, api.VERSION, api.PLURAL)
def start(body: kopf.Body, name: str, namespace: str, spec: kopf.Spec, status: kopf.Status,
          meta: kopf.Meta, logger: logging.Logger, memo: kopf.Memo, **_: Any) -> None:
    """Validate the spec and create the run's children (idempotent)."""
    if status.get("phase") in TERMINAL:
        return
    try:
        raw = dict(spec)
        if raw.get("minion") and not status.get("jobName"):  # not started yet: it trains the minion's model
            raw = _inherit(memo.minions, body, namespace, raw)
        parsed = api.LoraTrainingJobSpec.model_validate(raw)
        for obj in builders.children(name, namespace, parsed, CONFIG):
            if obj["kind"] == "Job" and status.get("jobName"):
                continue  # created before: never again, even if it is gone (status.job_gone)
            kopf.append_owner_reference(obj, owner=body)
            kopf.adjust_namespace(obj, namespace=namespace)
            _create(obj, namespace, meta["uid"])
    except (ValidationError, ChildRejected, ModelMismatch) as err:
        message = describe_validation_error(err) if isinstance(err, ValidationError) else str(err)
        DIRECTORY.set_run(namespace, name, meta["uid"], "Failed")
        _change_status(namespace, name, meta["uid"], lambda old: old.model_copy(update={
            "phase": "Failed", "message": message, "observed_generation": meta.get("generation"),
            "conditions": set_condition(old.conditions, R.FAILED, "True", R.INVALID_SPEC, message, _now_s(),
                                        meta.get("generation"))}), final=True)
        kopf.event(body, type="Warning", reason=R.INVALID_SPEC, message=message)
        raise kopf.PermanentError(message) from err
    job = builders.job_name(name)
    logger.info("training Job %s is in place", job)
    if status.get("jobName") != job:
        kopf.event(body, type="Normal", reason=R.JOB_CREATED, message=f"created Job {job}")
    sync(namespace, name)


def _inherit(controller: MinionController, body: kopf.Body, namespace: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The spec a run for a minion trains with (``minions.inherit``); while its minion does not exist, the run
    waits in Pending, saying so, and ``start`` is retried."""
    name, uid, wanted = body["metadata"]["name"], body["metadata"]["uid"], raw["minion"]
    found = controller.spec(namespace, wanted)
    if found is not None:
        return minions.inherit(wanted, found, raw)
    message = (f"waiting for Minion {wanted} in namespace {namespace}: the run trains that minion's model; create "
               "the Minion, or delete this run and create it without spec.minion")

    def waiting(old: LoraTrainingJobStatus) -> LoraTrainingJobStatus | None:
        if old.message == message:
            return None
        return old.model_copy(update={"phase": "Pending", "message": message, "conditions": set_condition(
            old.conditions, R.READY, "False", R.MINION_NOT_FOUND, message, _now_s(), None)})

    if _change_status(namespace, name, uid, waiting):
        kopf.event(body, type="Warning", reason=R.MINION_NOT_FOUND, message=message)
    raise kopf.TemporaryError(message, delay=MINION_WAIT_SECONDS)


@kopf.on.update(api.GROUP, api.VERSION, api.PLURAL, field="spec")
def spec_changed(body: kopf.Body, name: str, namespace: str, old: Any, new: Any, status: kopf.Status,
                 meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    """Only ``suspend`` reaches a running Job; other edits are reported, not applied."""
    old, new = dict(old or {}), dict(new or {})
    if old.get("suspend") != new.get("suspend") and status.get("phase") not in TERMINAL and new.get("queueName"):
        # Kueue owns Job.spec.suspend of a queued run: unsuspending it here would skip admission.
        kopf.event(body, type="Warning", reason=R.SUSPEND_IGNORED, message=(
            "spec.suspend of a queued run (queueName) is not applied: Kueue admits and suspends its Job; "
            "to pause it, deactivate its Workload (kubectl patch workload NAME --type=merge "
            "-p '{\"spec\":{\"active\":false}}')"))
    elif old.get("suspend") != new.get("suspend") and status.get("phase") not in TERMINAL:
        suspend = bool(new.get("suspend"))
        kubernetes.client.BatchV1Api(_client()).patch_namespaced_job(
            builders.job_name(name), namespace, {"spec": {"suspend": suspend}})
        kopf.event(body, type="Normal", reason=R.SUSPENDED if suspend else R.RESUMED,
                   message=f"Job {builders.job_name(name)} {'suspended' if suspend else 'resumed'}")
    frozen = _frozen_spec(namespace, name)
    if frozen is None:  # no run was started (an invalid spec): there is nothing to compare with
        return
    drift = spec_drift(frozen, _effective(memo.minions, namespace, new))
    message = (f"spec fields {', '.join(drift)} differ from the spec this run started with and are not "
               "applied; create a new LoraTrainingJob to train with them") if drift else \
        "the spec matches the one this run started with again"

    def report_drift(old: LoraTrainingJobStatus) -> LoraTrainingJobStatus | None:
        if not drift and not condition_true(old, R.SPEC_CHANGE_IGNORED):
            return None
        return old.model_copy(update={"conditions": set_condition(
            old.conditions, R.SPEC_CHANGE_IGNORED, "True" if drift else "False",
            R.IMMUTABLE_AFTER_START if drift else R.SPEC_RESTORED, message, _now_s(), meta.get("generation"))})

    if _change_status(namespace, name, meta["uid"], report_drift) and drift:
        kopf.event(body, type="Warning", reason=R.SPEC_CHANGE_IGNORED, message=message)
    sync(namespace, name)


def _effective(controller: MinionController, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A run's spec as it would train now: with its minion's model and settings (the frozen spec has them)."""
    found = controller.spec(namespace, spec["minion"]) if spec.get("minion") else None
    try:
        return minions.inherit(spec["minion"], found, spec) if found else spec
    except ModelMismatch:
        return spec


@kopf.timer(api.GROUP, api.VERSION, api.PLURAL, interval=CREDIT_INTERVAL,
            when=lambda spec, status, **_: bool(spec.get("minion")) and status.get("phase") in TERMINAL
            and not status.get("credited"))
def credit(body: kopf.Body, name: str, namespace: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta,
           memo: kopf.Memo, **_: Any) -> None:
    """Credit a finished run to its minion, once: the minion's ledger is keyed by run UID, and the run records
    the credit (status.credited) after the minion holds it, so an operator stopped in between credits nothing
    twice. A failed run is credited too, with 0 XP and why."""
    wanted, uid = spec["minion"], meta["uid"]
    entry = ledger_entry(name, uid, parse(dict(status)))
    try:
        done = memo.minions.credit(namespace, wanted, entry)
    except MinionGone as err:
        raise kopf.TemporaryError(f"{err}: the run's {entry.xp} XP are credited once it exists again",
                                  delay=MINION_WAIT_SECONDS) from err
    _change_status(namespace, name, uid, lambda old: None if old.credited else old.model_copy(update={
        "credited": Credit(minion=wanted, xp=entry.xp, time=_now_s())}))
    if done.status is None:  # credited before the operator could record it on the run
        return
    kopf.event(body, type="Normal", reason=R.CREDITED, message=(
        f"{entry.xp} XP credited to Minion {wanted}: level {done.status.level}, {done.status.xp} XP in total"))
    if done.status.level > done.level_before:
        kopf.event(done.minion, type="Normal", reason=R.LEVEL_UP, message=(
            f"level {done.level_before} -> {done.status.level} with run {name} ({entry.xp} XP; "
            f"{done.status.xp} XP in total)"))


@kopf.on.event(api.GROUP, api.VERSION, minion.PLURAL)
def minion_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Keep a minion's own status (level under its level table, observedGeneration) current."""
    if type != "DELETED":
        memo.minions.observe(dict(body))


@kopf.timer(api.GROUP, api.VERSION, api.PLURAL, interval=SYNC_INTERVAL, initial_delay=SYNC_INTERVAL,
            when=lambda status, **_: status.get("phase") not in TERMINAL)
def periodic_sync(name: str, namespace: str, **_: Any) -> None:
    sync(namespace, name)


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)
def run_objects(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace, name): cache.slim(body)}


@kopf.index("batch", "v1", "jobs", labels=_CHILD_SELECTOR)
def job_objects(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace, name): cache.slim(body)}


@kopf.index("", "v1", "pods", labels=_CHILD_SELECTOR)
def pod_objects(namespace: str, labels: kopf.Labels, body: kopf.Body,
                **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Pods by their Job's name: what ``sync`` listed by label before."""
    job = labels.get(cache.JOB_NAME_LABEL)
    return {(namespace, job): cache.slim(body)} if job else {}


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
def run_event(type: str | None, name: str, namespace: str, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    """A deleted run: forget it (an event, not a deletion handler, which would need a finalizer)."""
    if type == "DELETED":
        key = (namespace, name, meta["uid"])
        DIRECTORY.drop_run(namespace, name)
        WRITTEN.forget(namespace, name)
        with _locks_guard:
            _locks.pop((namespace, name), None)
        WRITER.forget(key)
        memo.endpoint.forget(key)


@kopf.on.event("batch", "v1", "jobs", labels=_CHILD_SELECTOR)
def job_changed(labels: kopf.Labels, namespace: str, **_: Any) -> None:
    owner = labels.get(builders.JOB_LABEL)
    if owner:
        sync(namespace, owner)


@kopf.on.event("", "v1", "pods", labels=_CHILD_SELECTOR)
def pod_changed(labels: kopf.Labels, annotations: kopf.Annotations, namespace: str, uid: str, type: str | None,
                **_: Any) -> None:
    owner = labels.get(builders.JOB_LABEL)
    # The endpoint learns which run each pod may report for from this watch, not from a read per report.
    DIRECTORY.set_pod(uid, namespace, None if type == "DELETED" else builders.reporting_run(labels, annotations))
    if owner:
        sync(namespace, owner)


def _read_run(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _custom().get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def _read_job(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _client().sanitize_for_serialization(
            kubernetes.client.BatchV1Api(_client()).read_namespaced_job(name, namespace))
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def _list_pods(namespace: str, job: str) -> list[dict[str, Any]]:
    return _client().sanitize_for_serialization(kubernetes.client.CoreV1Api(_client()).list_namespaced_pod(
        namespace, label_selector=f"{cache.JOB_NAME_LABEL}={job}").items)


def _owned(pods: list[dict[str, Any]], job: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The pods of ``job`` itself: a group restart creates a Job of the same name, whose pods the watch may
    deliver before the old pods' deletions."""
    if job is None:
        return pods
    uid = job["metadata"].get("uid")
    return [p for p in pods if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or ())]


def _delete_job(namespace: str, job: str) -> None:
    """Delete a broken group's Job, its pods first (foreground): the new pods take the old pods' names."""
    try:
        kubernetes.client.BatchV1Api(_client()).delete_namespaced_job(
            job, namespace, propagation_policy="Foreground")
    except ApiException as err:
        if err.status != 404:
            logging.getLogger(__name__).warning("deleting Job %s/%s for a group restart: %s", namespace, job, err)


def _create_job_again(run: dict[str, Any]) -> bool:
    """Create a run's Job again, from the spec it started with (its ConfigMap): a group restart must not apply
    edits made since. False when it could not (the next sync tries again)."""
    namespace, name = run["metadata"]["namespace"], run["metadata"]["name"]
    try:
        spec = api.LoraTrainingJobSpec.model_validate(_frozen_spec(namespace, name))
        obj = builders.job(name, namespace, spec, CONFIG)
        kopf.append_owner_reference(obj, owner=run)
        _create(obj, namespace, run["metadata"]["uid"])
    except (ApiException, kopf.TemporaryError, ChildRejected, ValidationError) as err:
        logging.getLogger(__name__).warning("creating Job %s/%s again for a group restart: %s", namespace,
                                            builders.job_name(name), err)
        return False
    return True


def _frozen_spec(namespace: str, name: str) -> dict[str, Any] | None:
    """The spec a run started with, from its ConfigMap; None when it has none (it never started)."""
    try:
        frozen = kubernetes.client.CoreV1Api(_client()).read_namespaced_config_map(
            builders.spec_configmap_name(name), namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return yaml.safe_load(frozen.data["spec.yaml"])


def sync(namespace: str, name: str) -> None:
    """Re-derive phase and conditions from the cached Job and its pods and write what changed."""
    with _lock(namespace, name):
        watched = cache.pick(_CACHES["runs"].get((namespace, name)))
        if watched is None or watched["metadata"].get("deletionTimestamp"):
            return
        key: RunKey = (namespace, name, watched["metadata"]["uid"])
        # Inside: a report write of this run in flight has finished, and WRITTEN has its response.
        with WRITER.exclusive(key) as held:
            obj = WRITTEN.newest(watched)
            spec = obj.get("spec") or {}
            old = parse(obj.get("status"))
            job_name = builders.job_name(name)
            job = cache.pick(_CACHES["jobs"].get((namespace, job_name)))
            if job is None and old.phase not in TERMINAL:
                # Maybe created a moment ago and not delivered yet: a miss alone must not end the run (job_gone).
                job = _read_job(namespace, job_name)
            pods = list(_CACHES["pods"].get((namespace, job_name)) or ())
            stall = int((spec.get("runtime") or {}).get("stallTimeoutSeconds") or 900)
            seen = old if held.report is None else \
                old.model_copy(update={"trainer": TrainerStatus.model_validate(held.report)})

            def derive(pods: list[dict[str, Any]]) -> tuple[LoraTrainingJobStatus, list[KubeEvent]]:
                return reconcile_status(
                    seen, job, pods, now=_now(), generation=obj["metadata"].get("generation"), stall_timeout=stall,
                    queued=bool(spec.get("queueName")),
                    xp_refused=xp_refusal(spec, CONFIG.untrusted_image(spec.get("image"))),
                    ephemeral_output=ephemeral_output(spec), group_restarts=group_restart_limit(spec))

            new, events = derive(_owned(pods, job))
            action = group_action(new, job)
            if action == "delete":
                _delete_job(namespace, job_name)
            elif action == "create" and _create_job_again(obj):
                new = group_restarted(new, _now_s(), obj["metadata"].get("generation"))
            if new.phase in TERMINAL and seen.phase not in TERMINAL:
                # The final summary is the ended pod's termination message: read it as it is now, since the
                # pod watch may trail the Job's.
                new, events = derive(_owned(_list_pods(namespace, job_name), job))
            DIRECTORY.set_run(namespace, name, key[2], new.phase)
            final = new.phase in TERMINAL
            if status_patch(seen, new) or final:  # the report rides along with a write the operator makes anyway
                WRITER.write(key, status_patch(old, new), final=final)
            else:  # nothing of its own to write: the report waits for its run's turn (the per-run interval)
                held.put_back()
        for event in events:
            kopf.event(obj, type=event.type, reason=event.reason, message=event.message)
