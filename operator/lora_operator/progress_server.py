"""The HTTPS endpoint where trainer pods report progress: the only way a pod's word reaches the status.

A pod proves who it is with its projected ServiceAccount token (audience ``lora-operator``), checked
with a TokenReview: the token must belong to run X's ServiceAccount and be bound to a pod of run X's
Job, and then the pod may report for run X only. The body is a ``ProgressReport``; anything else (an
unknown field such as ``phase`` or ``xp``, a non-finite number, an oversized string) is refused whole.
Accepted reports go to the ``StatusWriter``, which coalesces them. Pods need no RBAC at all.

Answers: 202 accepted; 200 stale (an older sequence than one already accepted from that pod); 400 bad
body; 401 no valid token; 403 a valid token of someone else; 404 no such run; 409 the run is finished;
413 body too large.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from lora_contract.api import ProgressReport
from lora_contract.progress import dump_status
from lora_contract.validation import describe_validation_error
from lora_operator import builders
from lora_operator.status_writer import RunKey, StatusWriter

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
# How long a TokenReview's answer is reused. Short: a deleted pod's token stops working within it.
REVIEW_TTL_SECONDS = 30.0
_POD_NAME, _POD_UID = "authentication.kubernetes.io/pod-name", "authentication.kubernetes.io/pod-uid"
_SA_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class Identity:
    """Who a valid token says the caller is."""

    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str


def identity_from_review(review: dict[str, Any], audience: str) -> Identity | None:
    """The caller of an authenticated TokenReview for ``audience`` that is a pod's ServiceAccount, or None."""
    status = review.get("status") or {}
    user = status.get("user") or {}
    username = user.get("username") or ""
    extra = user.get("extra") or {}
    if not status.get("authenticated") or audience not in (status.get("audiences") or []):
        return None
    if not username.startswith(_SA_PREFIX) or not extra.get(_POD_NAME) or not extra.get(_POD_UID):
        return None  # not a ServiceAccount, or a token not bound to a pod
    namespace, _, account = username[len(_SA_PREFIX):].partition(":")
    return Identity(namespace, account, extra[_POD_NAME][0], extra[_POD_UID][0])


class RunDirectory:
    """What the endpoint knows of runs and their pods, kept current by the operator's handlers and watches
    (no API read per report)."""

    def __init__(self) -> None:
        self._runs: dict[tuple[str, str], tuple[str, str | None]] = {}  # (ns, name) -> (uid, phase)
        self._pods: dict[str, tuple[str, str]] = {}  # pod uid -> (ns, run name)
        self._lock = threading.Lock()

    def set_run(self, namespace: str, name: str, uid: str, phase: str | None) -> None:
        with self._lock:
            self._runs[namespace, name] = (uid, phase)

    def drop_run(self, namespace: str, name: str) -> None:
        with self._lock:
            self._runs.pop((namespace, name), None)

    def run(self, namespace: str, name: str) -> tuple[str, str | None] | None:
        with self._lock:
            return self._runs.get((namespace, name))

    def set_pod(self, uid: str, namespace: str, run: str | None) -> None:
        with self._lock:
            if run is None:
                self._pods.pop(uid, None)
            else:
                self._pods[uid] = (namespace, run)

    def pod_run(self, uid: str) -> tuple[str, str] | None:
        with self._lock:
            return self._pods.get(uid)


class Reviewer:
    """TokenReviews, with answers reused for ``ttl`` seconds (keyed by the token's hash)."""

    def __init__(self, review: Callable[[str], dict[str, Any]], audience: str = builders.TOKEN_AUDIENCE,
                 ttl: float = REVIEW_TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._review, self.audience, self.ttl, self.clock = review, audience, ttl, clock
        self._cache: dict[str, tuple[Identity | None, float]] = {}
        self._lock = threading.Lock()

    def identity(self, token: str) -> Identity | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit and hit[1] > now:
                return hit[0]
            if len(self._cache) > 10000:  # expired entries of rotated tokens
                self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
        found = identity_from_review(self._review(token), self.audience)
        with self._lock:
            self._cache[key] = (found, now + self.ttl)
        return found


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def _text(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


class ProgressEndpoint:
    """The aiohttp application: ``POST /v1/namespaces/{ns}/loratrainingjobs/{name}/report``."""

    def __init__(self, reviewer: Reviewer, directory: RunDirectory, writer: StatusWriter,
                 read_pod_run: Callable[[str, str], str | None]) -> None:
        self.reviewer, self.directory, self.writer = reviewer, directory, writer
        self.read_pod_run = read_pod_run  # (namespace, pod name) -> the run it may report for, if not yet watched
        self._sequences: dict[tuple[RunKey, str], int] = {}
        self._lock = threading.Lock()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/namespaces/{namespace}/loratrainingjobs/{name}/report", self.handle)
        app.router.add_get("/healthz", _healthz)
        return app

    def _authorized(self, who: Identity, namespace: str, name: str) -> bool:
        """The token's pod belongs to run ``name`` and runs as its ServiceAccount."""
        if who.namespace != namespace or who.service_account != builders.service_account_name(name):
            return False
        run = self.directory.pod_run(who.pod_uid)
        if run is None:
            run = (namespace, self.read_pod_run(namespace, who.pod_name))
        return run == (namespace, name)

    async def handle(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _text(413, f"a report is at most {MAX_BODY_BYTES} bytes")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _text(401, "a bearer token (the pod's projected ServiceAccount token) is required")
        loop = asyncio.get_running_loop()
        try:
            who = await loop.run_in_executor(None, self.reviewer.identity, token.strip())
        except Exception as err:  # the apiserver is unreachable: the trainer retries
            log.warning("TokenReview failed: %s", err)
            return _text(503, "cannot review the token now; retry")
        if who is None:
            return _text(401, f"the token is not valid for audience {self.reviewer.audience} or not bound to a pod")
        if not await loop.run_in_executor(None, self._authorized, who, namespace, name):
            return _text(403, f"pod {who.namespace}/{who.pod_name} may not report for run {namespace}/{name}")
        run = self.directory.run(namespace, name)
        if run is None:
            return _text(404, f"no LoraTrainingJob {namespace}/{name} is known to the operator")
        if run[1] in ("Succeeded", "Failed"):
            return _text(409, f"run {namespace}/{name} is {run[1]}; it takes no more reports")
        try:
            report = ProgressReport.model_validate_json(await request.read())
        except web.HTTPRequestEntityTooLarge:
            return _text(413, f"a report is at most {MAX_BODY_BYTES} bytes")
        except ValidationError as err:
            return _text(400, describe_validation_error(err, what="report", limit=5))
        key: RunKey = (namespace, name, run[0])
        with self._lock:
            last = self._sequences.get((key, who.pod_uid), -1)
            if report.sequence <= last:
                return _text(200, f"stale: sequence {report.sequence} <= {last}, already accepted")
            self._sequences[key, who.pod_uid] = report.sequence
        if not self.writer.report(key, dump_status(report.trainer)):
            return _text(409, f"run {namespace}/{name} is finished; it takes no more reports")
        return _text(202, "accepted")

    def forget(self, key: RunKey) -> None:
        with self._lock:
            self._sequences = {k: v for k, v in self._sequences.items() if k[0] != key}


def _stamp(folder: Path) -> tuple[int, int]:
    return (folder / "tls.crt").stat().st_mtime_ns, (folder / "tls.key").stat().st_mtime_ns


async def keep_certificate_fresh(context: ssl.SSLContext, folder: Path, interval: float = 60.0) -> None:
    """Load the certificate again when its files change: cert-manager renews it in place (the kubelet
    swaps the Secret volume's files), and new connections must not meet an expired one."""
    seen = _stamp(folder)
    while True:
        await asyncio.sleep(interval)
        try:
            stamp = _stamp(folder)
            if stamp != seen:
                context.load_cert_chain(folder / "tls.crt", folder / "tls.key")
                seen = stamp
                log.info("progress endpoint: loaded the renewed certificate from %s", folder)
        except (OSError, ssl.SSLError) as err:  # a half-swapped volume: try again next time
            log.warning("progress endpoint: cannot load the certificate from %s yet: %s", folder, err)


def tls_context(folder: Path) -> ssl.SSLContext:
    cert, key = folder / "tls.crt", folder / "tls.key"
    if not (cert.is_file() and key.is_file()):
        raise SystemExit(f"lora-operator: the progress endpoint needs a TLS certificate: {cert} and {key} are "
                         "missing (the chart mounts its Secret there; set LORA_PROGRESS_TLS_DIR to use another folder)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def serve(endpoint: ProgressEndpoint, port: int, context: ssl.SSLContext) -> web.AppRunner:
    runner = web.AppRunner(endpoint.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host="0.0.0.0", port=port, ssl_context=context).start()  # behind a Service
    log.info("progress endpoint listening on :%d (HTTPS)", port)
    return runner
