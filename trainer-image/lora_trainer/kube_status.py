"""Send the run's progress into its LoraTrainingJob's status, from inside the trainer pod.

Transport (docs/architecture.md): the trainer patches the ``status`` subresource of its
own resource with a merge patch, authenticated by a short-lived projected ServiceAccount
token whose Role allows ``get``/``patch`` on ``loratrainingjobs/status`` for this one
resource name. Writes are throttled (at most one every ``min_interval`` seconds, plus one
at each step boundary); failures are logged and never stop training, because the final
summary also travels through the pod's termination message.

Only the standard library is used, so this works in any trainer image.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lora_operator import api, progress

log = logging.getLogger(__name__)

# Fields the operator owns; the trainer never writes them.
_OPERATOR_FIELDS = frozenset({"phase", "conditions", "message", "jobName", "observedGeneration",
                              "startTime", "completionTime"})
_BOUNDARY = (progress.StepEvent, progress.MetricsEvent, progress.ReportEvent, progress.FailureEvent)


class KubeStatusSink:
    """A ``Sink`` that mirrors the reduced progress into the resource status."""

    def __init__(self, *, name: str, namespace: str, server: str, token_dir: Path,
                 min_interval: float = 3.0, timeout: float = 10.0) -> None:
        self.url = (f"{server.rstrip('/')}/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/"
                    f"{api.PLURAL}/{name}/status")
        self.token_dir = token_dir
        self.min_interval = min_interval
        self.timeout = timeout
        self.status: dict[str, Any] = progress.initial_status()
        self.writes = 0
        self.failures = 0
        self._sent: dict[str, Any] = {}
        self._last_write = 0.0
        self._dirty = False
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="status-flusher", daemon=True)
        self._flusher.start()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> KubeStatusSink | None:
        """The sink for a run inside a LoraTrainingJob pod, or None outside Kubernetes."""
        env = dict(os.environ) if env is None else env
        name, namespace = env.get("LORA_JOB_NAME"), env.get("LORA_JOB_NAMESPACE")
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
        if not (name and namespace and host):
            return None
        host = f"[{host}]" if ":" in host else host
        token_dir = Path(env.get("LORA_STATUS_TOKEN_DIR", "/var/run/lora/token"))
        interval = float(env.get("LORA_STATUS_MIN_INTERVAL_SECONDS", "3"))
        return cls(name=name, namespace=namespace, server=f"https://{host}:{port}", token_dir=token_dir,
                   min_interval=interval)

    def emit(self, event: progress.TrainerEvent, status: dict[str, Any]) -> None:
        with self._lock:
            self.status = status
            self._dirty = True
            due = time.monotonic() - self._last_write >= self.min_interval
        if isinstance(event, _BOUNDARY) or due:
            self.flush()

    def close(self, final_status: dict[str, Any]) -> None:
        self._stop.set()
        with self._lock:
            self.status = final_status
            self._dirty = True
        self.flush()

    def flush(self) -> None:
        with self._send_lock:  # one write at a time, so an older state never lands after a newer one
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            fields = {k: v for k, v in self.status.items() if k not in _OPERATOR_FIELDS}
            # Only what changed since the last successful write (lists are replaced whole).
            patch = {k: v for k, v in fields.items() if self._sent.get(k) != v}
            self._dirty = False
            self._last_write = time.monotonic()
        if not patch:
            return
        if self._send(patch):
            with self._lock:
                self._sent.update(patch)
        else:
            with self._lock:
                self._dirty = True

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.min_interval):
            self.flush()

    def _send(self, patch: dict[str, Any]) -> bool:
        try:
            token = (self.token_dir / "token").read_text().strip()  # re-read: the kubelet rotates it
            ctx = ssl.create_default_context(cafile=str(self.token_dir / "ca.crt"))
            request = urllib.request.Request(
                self.url, method="PATCH", data=json.dumps({"status": patch}).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"})
            with urllib.request.urlopen(request, timeout=self.timeout, context=ctx):
                pass
            self.writes += 1
            return True
        except (OSError, urllib.error.URLError, ssl.SSLError) as err:
            self.failures += 1
            detail = err.read().decode(errors="replace")[:300] if isinstance(err, urllib.error.HTTPError) else ""
            if self.failures == 1 or self.failures % 20 == 0:
                log.warning("status update failed (%d so far; the final report still travels via the "
                            "termination message): %s %s", self.failures, err, detail)
            return False
