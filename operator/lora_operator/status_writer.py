"""The operator's one path to the status subresource, under a write budget.

Two kinds of writes reach it: the operator's own (phase, conditions, XP: ``exclusive`` + ``write``,
synchronous, so the next reconcile reads what it wrote) and trainer reports (``report``: only the newest
per run is kept, and a background thread writes it at most once per ``run_interval``). Every write spends
a token from one bucket of ``rate`` writes per second, so a thousand chatty runs cost the apiserver no
more than the budget; a pending report rides along with the operator's next write of the same run.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

RunKey = tuple[str, str, str]  # namespace, name, uid: a recreated run with the same name is another run
Patch = Callable[[str, str, dict[str, Any]], None]
# A report write that failed (apiserver busy or down) is tried again after this long.
RETRY_SECONDS = 2.0


class TokenBucket:
    """``rate`` tokens per second, at most one second's worth saved up."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.capacity, self.clock = rate, max(1.0, rate), clock
        self._tokens, self._at = self.capacity, clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def try_take(self) -> float:
        """Take a token and return 0, or return the seconds until one is available."""
        with self._lock:
            self._refill()
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate

    def take(self) -> None:
        while (wait := self.try_take()) > 0:
            time.sleep(wait)


@dataclass
class Held:
    """A run held by ``StatusWriter.exclusive``: its pending report, if any."""

    report: dict[str, Any] | None
    returned: bool = False

    def put_back(self) -> None:
        self.returned = True


class StatusWriter:
    """Writes merge patches of ``status`` through ``patch(namespace, name, status_patch)``."""

    def __init__(self, patch: Patch, *, rate: float, run_interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._patch, self.run_interval, self.clock = patch, run_interval, clock
        self.bucket = TokenBucket(rate, clock)
        self._pending: dict[RunKey, tuple[dict[str, Any], float]] = {}  # newest report, due time
        self._last: dict[RunKey, float] = {}
        self._closed: set[RunKey] = set()
        self._run_locks: dict[RunKey, threading.RLock] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.writes = 0

    # --- trainer reports -----------------------------------------------------------------
    def report(self, key: RunKey, trainer: dict[str, Any]) -> bool:
        """Queue ``trainer`` as the run's newest report; False once the run is finished (``close``)."""
        with self._cond:
            if key in self._closed:
                return False
            due = self._pending[key][1] if key in self._pending else \
                max(self.clock(), self._last.get(key, float("-inf")) + self.run_interval)
            self._pending[key] = (trainer, due)
            self._cond.notify()
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="status-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is pending (within the budget), then stop."""
        self._stop.set()
        with self._cond:
            self._cond.notify()
        if self._thread:
            self._thread.join(timeout=30)

    def _next_due(self) -> tuple[RunKey | None, float]:
        with self._cond:
            if not self._pending:
                return None, 1.0
            key = min(self._pending, key=lambda k: self._pending[k][1])
            return key, max(0.0, self._pending[key][1] - self.clock())

    def _loop(self) -> None:
        while True:
            key, wait = self._next_due()
            if key is None and self._stop.is_set():
                return
            if wait > 0 and not self._stop.is_set():
                with self._cond:
                    self._cond.wait(wait)
                continue
            if key is None:
                continue
            if (wait := self.bucket.try_take()) > 0:
                time.sleep(wait)
                continue
            self._write_report(key)

    def _write_report(self, key: RunKey) -> None:
        with self._run_lock(key):
            with self._cond:
                item = self._pending.pop(key, None)
            if item is None:
                return
            try:
                self._send(key, {"trainer": item[0]})
            except Exception as err:  # the loop must outlive any API error
                if getattr(err, "status", None) == 404:
                    self.forget(key)  # the run is gone
                    return
                log.warning("writing the report of %s/%s failed, retrying in %.0fs: %s",
                            key[0], key[1], RETRY_SECONDS, err)
                with self._cond:  # unless a newer report arrived meanwhile
                    self._pending.setdefault(key, (item[0], self.clock() + RETRY_SECONDS))

    # --- the operator's own writes -----------------------------------------------------
    @contextlib.contextmanager
    def exclusive(self, key: RunKey) -> Iterator[Held]:
        """Hold the run (no report of it is written meanwhile) and take its pending report, newer than
        anything in the API, for the caller to fold into what it writes with ``write``. The report goes back
        to the queue should the caller fail, or ``put_back`` it."""
        with self._run_lock(key):
            with self._cond:
                item = self._pending.pop(key, None)
            held = Held(item[0] if item else None)
            try:
                yield held
            except BaseException:
                held.put_back()
                raise
            finally:
                if item and held.returned:
                    with self._cond:
                        if key not in self._closed:
                            self._pending.setdefault(key, item)

    def write(self, key: RunKey, patch: dict[str, Any], *, final: bool = False) -> None:
        """Write ``patch`` now, waiting for budget; inside ``exclusive``. ``final``: the run is finished, and
        reports that arrive later are refused, once the write went through: a refused one (409, 429, the
        apiserver down) leaves the run open and its report queued, for the next sync to write again."""
        if patch:
            self.bucket.take()
            self._send(key, patch)
        if final:
            self.close(key)

    def close(self, key: RunKey) -> None:
        """No more reports for this run: it is finished (``forget`` it once it is deleted)."""
        with self._cond:
            self._pending.pop(key, None)
            self._closed.add(key)

    def forget(self, key: RunKey) -> None:
        with self._cond:
            self._pending.pop(key, None)
            self._last.pop(key, None)
            self._closed.discard(key)
            self._run_locks.pop(key, None)

    def _send(self, key: RunKey, patch: dict[str, Any]) -> None:
        self._patch(key[0], key[1], patch)
        with self._cond:
            self._last[key] = self.clock()
            self.writes += 1

    def _run_lock(self, key: RunKey) -> threading.RLock:
        with self._cond:
            return self._run_locks.setdefault(key, threading.RLock())
