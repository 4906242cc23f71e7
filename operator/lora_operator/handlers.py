"""Kopf wiring only: each handler routes Kopf's call to a controller kept in Kopf's memo.

``configure`` builds the controllers at startup: ``RunController`` (LoraTrainingJobs: their children, their
status from the Job and pods, group restarts, credits) and ``MinionController`` (Minions), over one
``Kube`` API adapter. Settings are read from the environment there, except the timer intervals, which Kopf
needs when the handlers are registered (import time). Per-run state lives in the run controller only.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import kopf

from lora_contract import api, minion
from lora_contract.wire import timestamp
from lora_operator import builders, cache, progress_server
from lora_operator.kube import Kube
from lora_operator.minion_controller import MinionController
from lora_operator.run_controller import RunController
from lora_operator.status import TERMINAL

# How often each live run's status is re-derived even without Job/Pod events (Stalled), and how often an
# ended run's credit to its minion is tried: Kopf takes timer intervals at registration.
SYNC_INTERVAL = float(os.environ.get("LORA_SYNC_INTERVAL_SECONDS", "30"))
CREDIT_INTERVAL = float(os.environ.get("LORA_CREDIT_INTERVAL_SECONDS", "5"))
_CHILD_SELECTOR = {"app.kubernetes.io/managed-by": builders.MANAGED_BY}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, run_objects: kopf.Index,
                    job_objects: kopf.Index, pod_objects: kopf.Index, **_: Any) -> None:
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
    env = os.environ
    kube = Kube.connect()
    memo.minions = MinionController(kube, timestamp)
    memo.runs = RunController(
        kube, builders.OperatorConfig.from_env(), memo.minions, {"runs": run_objects, "jobs": job_objects,
                                                                 "pods": pod_objects},
        writes_per_second=float(env.get("LORA_STATUS_WRITES_PER_SECOND", "20")),
        run_interval=float(env.get("LORA_STATUS_RUN_INTERVAL_SECONDS", "5")),
        minion_wait=float(env.get("LORA_MINION_WAIT_SECONDS", "10")))
    tls_dir = Path(env.get("LORA_PROGRESS_TLS_DIR", builders.DEFAULT_TLS_DIR))
    context = progress_server.tls_context(tls_dir)
    memo.runs.writer.start()
    memo.endpoint = progress_server.ProgressEndpoint(progress_server.Reviewer(kube.token_review),
                                                     memo.runs.directory, memo.runs.writer, kube.pod_run)
    memo.runner = await progress_server.serve(memo.endpoint, int(env.get("LORA_PROGRESS_PORT", "8443")), context)
    memo.certificate = asyncio.create_task(progress_server.keep_certificate_fresh(context, tls_dir))


@kopf.on.cleanup()
async def shut_down(memo: kopf.Memo, **_: Any) -> None:
    memo.certificate.cancel()
    await memo.runner.cleanup()
    memo.runs.writer.stop()


@kopf.on.resume(api.GROUP, api.VERSION, api.PLURAL)
@kopf.on.create(api.GROUP, api.VERSION, api.PLURAL)
def start(memo: kopf.Memo, **kwargs: Any) -> None:
    memo.runs.start(**kwargs)


@kopf.on.update(api.GROUP, api.VERSION, api.PLURAL, field="spec")
def spec_changed(memo: kopf.Memo, **kwargs: Any) -> None:
    memo.runs.spec_changed(**kwargs)


@kopf.timer(api.GROUP, api.VERSION, api.PLURAL, interval=SYNC_INTERVAL, initial_delay=SYNC_INTERVAL,
            when=lambda status, **_: status.get("phase") not in TERMINAL)
def periodic_sync(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    memo.runs.sync(namespace, name)


@kopf.timer(api.GROUP, api.VERSION, api.PLURAL, interval=CREDIT_INTERVAL,
            when=lambda spec, status, **_: bool(spec.get("minion")) and status.get("phase") in TERMINAL
            and not status.get("credited"))
def credit(memo: kopf.Memo, **kwargs: Any) -> None:
    memo.runs.credit(**kwargs)


@kopf.on.event(api.GROUP, api.VERSION, minion.PLURAL)
def minion_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if type != "DELETED":
        memo.minions.observe(dict(body))


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)
def run_objects(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace, name): cache.slim(body)}


@kopf.index("batch", "v1", "jobs", labels=_CHILD_SELECTOR)
def job_objects(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace, name): cache.slim(body)}


@kopf.index("", "v1", "pods", labels=_CHILD_SELECTOR)
def pod_objects(namespace: str, labels: kopf.Labels, body: kopf.Body,
                **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Pods by their Job's name: what ``sync`` reads."""
    job = labels.get(cache.JOB_NAME_LABEL)
    return {(namespace, job): cache.slim(body)} if job else {}


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
def run_event(type: str | None, name: str, namespace: str, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        memo.runs.forget((namespace, name, meta["uid"]), memo.endpoint)


@kopf.on.event("batch", "v1", "jobs", labels=_CHILD_SELECTOR)
def job_changed(labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    owner = labels.get(builders.JOB_LABEL)
    if owner:
        memo.runs.sync(namespace, owner)


@kopf.on.event("", "v1", "pods", labels=_CHILD_SELECTOR)
def pod_changed(labels: kopf.Labels, annotations: kopf.Annotations, namespace: str, uid: str, type: str | None,
                memo: kopf.Memo, **_: Any) -> None:
    memo.runs.pod_seen(labels, annotations, namespace, uid, deleted=type == "DELETED")
