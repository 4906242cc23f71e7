"""Stop signals: SIGTERM (the kubelet deleting the pod: a delete, a node drain, a preemption, Kueue
suspending the Job) and SIGINT (Ctrl-C at a terminal).

The trainer runs as PID 1 in its container, where the kernel drops any signal whose action is the
default; a handler is installed, so it is not (no init such as tini is needed: see docs/trainer.md).
What the handler does depends on where the run is:

- inside training (``deferred()``), the first signal is only recorded: step 4's callback asks the
  Trainer for a checkpoint at the end of the optimizer step in progress and stops the run once its
  completion marker is written, so the retry resumes from exactly that step;
- anywhere else (loading, grading, saving), it raises ``Interrupted`` in the main thread at once, as
  Ctrl-C raises KeyboardInterrupt: outputs get their names only when complete (``layout``), so a
  save cut short leaves a ``.partial`` folder or no marker, never something that looks finished;
- a second signal during training stops at once; once the run is stopping or done (``settle()``),
  further signals are recorded only, so the final report and termination message still get written.

The handler only sets flags, writes to stderr with ``os.write`` and raises: it may run between any two
bytecodes of the main thread, where taking a lock or a buffered write could deadlock.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A stop signal ended the run where this is raised. A BaseException, as KeyboardInterrupt is: library
    code that catches ``Exception`` (retries, cleanups) must not swallow it. ``checkpoint`` names the
    checkpoint saved for it (training only), ``step``/``total`` the optimizer step it was saved at."""

    def __init__(self, signum: int, checkpoint: str | None = None, step: int | None = None,
                 total: int | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.checkpoint, self.step, self.total = signum, checkpoint, step, total

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


class StopSignals:
    """The run's stop-signal state; ``install()`` makes it the process's SIGTERM and SIGINT handler.

    Not installed (tests, benchmarks calling ``run_pipeline``), it never receives anything and every
    method is a no-op, so the pipeline uses it unconditionally.
    """

    def __init__(self) -> None:
        self.received: int | None = None  # the first stop signal, once one came
        self._stopping = False  # Interrupted was raised, or the run is past its steps: raise no more
        self._deferring = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """A stop signal came and has not been acted on yet."""
        return self.received is not None and not self._stopping

    def install(self) -> None:
        """Handle SIGTERM and SIGINT (from the main thread: Python runs handlers there only)."""
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        first = self.received is None
        if first:
            self.received = signum
        name = signal.Signals(signum).name
        if self._stopping:
            return
        if self._deferring and first:
            os.write(2, f"lora-trainer: {name}: stopping after the current optimizer step, with a checkpoint "
                        f"(send it again to stop at once)\n".encode())
            return
        raise self.interrupt(signum=signum)

    def request(self) -> None:
        """Another worker of a data-parallel run received a stop signal: stop as if this one had (a pod's
        workers all get the kubelet's SIGTERM, but the workers of other pods do not)."""
        if self.received is None:
            self.received = signal.SIGTERM

    def interrupt(self, signum: int | None = None, checkpoint: str | None = None, step: int | None = None,
                  total: int | None = None) -> Interrupted:
        """The exception that stops the run now; no further signal raises after it."""
        self._stopping = True
        chosen = signum or self.received
        assert chosen is not None, "interrupt() without a stop signal"
        return Interrupted(chosen, checkpoint, step, total)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside, the first stop signal is only recorded: the code inside polls ``requested`` and stops
        where its state is whole (step 4: after the optimizer step, with a checkpoint). A signal still
        not acted on when the block ends normally stops the run there."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.requested:
            raise self.interrupt()

    def settle(self) -> None:
        """The run's steps are over (done, failed or interrupted): later signals are recorded only, so
        the final report, the report file and the termination message are written (about a second;
        the grace period allows far more)."""
        self._stopping = True
