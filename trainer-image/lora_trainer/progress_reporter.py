"""Report the run's progress to the operator, from inside the trainer pod.

Why a POST to the operator and not a status write: the operator is the only writer of the status,
so it can refuse a malformed report, keep phase, conditions and XP its own, and the trainer pod (which
may run code the operator does not trust) needs no RBAC at all. The pod proves who it is with its
projected ServiceAccount token, read again for every request because the kubelet rotates it.

Why whole, coalesced states: every report carries the latest ``TrainerStatus``, so a throttled or lost
report costs nothing, and its ``sequence`` lets the operator drop one that arrives after a newer one.

Why it never raises: the training run matters more than a progress update, and the final summary also
reaches the operator through the pod's termination message. The POSTs run on a thread of their own, so
a slow operator never slows training. Standard library only, so it works in any trainer image.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from lora_contract.api import ProgressReport, TrainerStatus
from lora_contract.progress import (
    FailureEvent,
    MetricsEvent,
    ReportEvent,
    StepEvent,
    TrainerEvent,
    initial_status,
)
from lora_contract.wire import REPORT_CA_ENV, REPORT_TOKEN_ENV, REPORT_URL_ENV, TOKEN_FILE

log = logging.getLogger(__name__)

# Events after which the operator should hear at once, throttle or not.
_BOUNDARY = (StepEvent, MetricsEvent, ReportEvent, FailureEvent)
_LOG_EVERY = 20
_BODY_IN_LOG = 300
_HINTS = {400: "the operator refused the report as malformed: a bug, or trainer and operator versions differ",
          401: "the operator did not accept the token: a token problem",
          403: "the token may not report for this run: a token or RBAC problem"}


class ProgressReporter:
    """A ``Sink`` that POSTs ``ProgressReport``s to the operator's progress endpoint."""

    def __init__(self, url: str, token_file: Path, ca_file: Path | None = None, *, min_interval: float = 3.0,
                 timeout: float = 10.0, backoff_base: float = 1.0, backoff_cap: float = 15.0,
                 close_attempts: int = 3, close_timeout: float = 10.0) -> None:
        self.url = url
        self.token_file = token_file
        self.ca_file = ca_file
        self.min_interval = min_interval
        self.timeout = timeout
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.close_attempts, self.close_timeout = close_attempts, close_timeout
        self.writes = 0
        self.failures = 0
        self._status = initial_status()  # the latest state; not sent yet when ``_dirty``
        self._dirty = False
        self._urgent = False  # a step boundary: send without waiting for the throttle
        self._sequence = 0
        self._last_attempt = float("-inf")
        self._backoff = 0.0  # the current retry delay; 0 when the last attempt succeeded
        self._retry_at = float("-inf")
        self._closed = False
        self._wake = threading.Condition()
        self._flusher = threading.Thread(target=self._flush_loop, name="progress-reporter", daemon=True)
        self._flusher.start()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ProgressReporter | None:
        """The reporter of a run in a LoraTrainingJob pod, or None outside Kubernetes (no LORA_REPORT_URL)."""
        env = dict(os.environ) if env is None else env
        url = env.get(REPORT_URL_ENV)
        if not url:
            return None
        ca = env.get(REPORT_CA_ENV)
        return cls(url, Path(env.get(REPORT_TOKEN_ENV, TOKEN_FILE)),
                   Path(ca) if ca else None,
                   min_interval=float(env.get("LORA_REPORT_MIN_INTERVAL_SECONDS", "3")))

    def emit(self, event: TrainerEvent, status: TrainerStatus) -> None:
        with self._wake:
            self._status, self._dirty = status, True
            self._urgent = self._urgent or isinstance(event, _BOUNDARY)
            self._wake.notify()

    def close(self, final_status: TrainerStatus) -> None:
        """Stop the flusher and try a few times, within ``close_timeout`` seconds, to deliver the final state.

        The flusher is not waited for: a POST of it still in flight carries a lower sequence, so the
        operator ignores it should it land after the final one."""
        deadline = time.monotonic() + self.close_timeout
        with self._wake:
            self._closed = True
            self._status, self._dirty = final_status, False
            self._wake.notify()
        delay = self.backoff_base
        for attempt in range(self.close_attempts):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self._post(final_status, timeout=min(self.timeout, left)):
                return
            if attempt + 1 < self.close_attempts:
                time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
                delay = min(delay * 2, self.backoff_cap)
        log.warning("the final progress report did not reach the operator; it reads the final summary from the "
                    "termination message instead")

    def _next_send(self, now: float) -> float:
        """When the pending state may go out: after any backoff, and after the throttle unless urgent."""
        throttle = now if self._urgent else self._last_attempt + self.min_interval
        return max(self._retry_at, throttle)

    def _flush_loop(self) -> None:
        while True:
            with self._wake:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    due = self._next_send(now) if self._dirty else None
                    if due is not None and due <= now:
                        break
                    self._wake.wait(None if due is None else due - now)
                status, self._dirty, self._urgent = self._status, False, False
            if not self._post(status, timeout=self.timeout):
                with self._wake:  # send again after the backoff, or whatever came in meanwhile
                    self._dirty = True

    def _post(self, status: TrainerStatus, timeout: float) -> bool:
        """One attempt; True when the operator took it (a stale answer included). Never raises."""
        with self._wake:
            self._sequence += 1
            self._last_attempt = time.monotonic()
            body = ProgressReport(sequence=self._sequence, trainer=status)
        try:
            token = self.token_file.read_text().strip()  # re-read: the kubelet rotates it
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            request = urllib.request.Request(
                self.url, method="POST", data=body.model_dump_json(by_alias=True, exclude_none=True).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=timeout, context=context):
                pass
        except Exception as err:  # any trouble at all: a lost report must not stop training
            self._failed(err)
            return False
        with self._wake:
            self.writes += 1
            recovered, self._backoff, self._retry_at = self._backoff > 0, 0.0, float("-inf")
        if recovered:
            log.info("progress report delivered again after %d failed attempts so far", self.failures)
        return True

    def _failed(self, err: Exception) -> None:
        with self._wake:
            self.failures += 1
            failures = self.failures
            self._backoff = min(self.backoff_cap, self._backoff * 2 or self.backoff_base)
            self._retry_at = time.monotonic() + self._backoff
        if failures == 1 or failures % _LOG_EVERY == 0:
            detail = ""
            if isinstance(err, urllib.error.HTTPError):
                detail = f" ({_HINTS[err.code]})" if err.code in _HINTS else ""
                detail += f": {_body(err)}"
            log.warning("progress report to %s failed, %d failed attempts so far, retrying with backoff (the "
                        "final summary still reaches the operator via the termination message): %s%s",
                        self.url, failures, err, detail)


def _body(err: urllib.error.HTTPError) -> str:
    """The start of an error answer's body, for the log; '' when it cannot be read."""
    try:
        return err.read(4 * _BODY_IN_LOG).decode(errors="replace")[:_BODY_IN_LOG]
    except Exception:  # the log line matters less than the flusher thread
        return ""
