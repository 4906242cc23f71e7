"""The event emitter and its sinks.

The pipeline emits ``lora_contract.progress`` events only; everything that shows or stores
progress is a ``Sink``. The emitter folds events with ``progress.reduce`` once, so every sink sees
the same ``TrainerStatus``: the one the trainer reports to the operator.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, TextIO

from lora_contract.api import PIPELINE_STEPS, TrainerStatus
from lora_contract.progress import (
    EvalEvent,
    FailureEvent,
    MetricsEvent,
    NoteEvent,
    StepEvent,
    StopEvent,
    TrainerEvent,
    TrainEvent,
    dump_event,
    initial_status,
    reduce,
)
from lora_contract.rendering import MARKS, number, report_table
from lora_contract.xp import xp_for


class Sink(Protocol):
    """Receives every event in order with the run's status after it, then the final status once.

    The status is the emitter's one fold of the events (``progress.reduce``): sinks read it,
    they never fold again.

    A sink should not raise for transient trouble (the operator being briefly unreachable): the
    training run matters more than one lost progress update.
    """

    def emit(self, event: TrainerEvent, status: TrainerStatus) -> None: ...

    def close(self, final_status: TrainerStatus) -> None: ...


class Emitter:
    """Fans events out to sinks and keeps the reduced status."""

    def __init__(self, sinks: Iterable[Sink]) -> None:
        self.sinks = list(sinks)
        self.status = initial_status()
        self._lock = threading.Lock()  # notes may come from a watcher thread (``growth``)

    def emit(self, event: TrainerEvent) -> None:
        with self._lock:
            self.status = reduce(self.status, event)
            for sink in self.sinks:
                sink.emit(event, self.status)

    def close(self) -> TrainerStatus:
        for sink in self.sinks:
            sink.close(self.status)
        return self.status


class JsonlSink:
    """One JSON event per line, appended (a resumed run continues the same file); '-' is stdout."""

    def __init__(self, path: str | Path) -> None:
        self._stdout = str(path) == "-"
        if self._stdout:
            self._file: TextIO = sys.stdout
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def emit(self, event: TrainerEvent, status: TrainerStatus) -> None:
        self._file.write(dump_event(event) + "\n")
        self._file.flush()

    def close(self, final_status: TrainerStatus) -> None:
        if not self._stdout:
            self._file.close()


_BAR_WIDTH = 24


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_bar(status: TrainerStatus, tokens_per_second: float | None = None) -> str | None:
    """'training [████░░░░] 12/30  loss 1.8421  lr 9.5e-04  812 tok/s  ETA 1m04s', or None."""
    total = status.training_total_steps
    if not total:
        return None
    step = status.training_step or 0
    filled = round(_BAR_WIDTH * min(1.0, step / total))
    parts = [f"training [{'█' * filled}{'░' * (_BAR_WIDTH - filled)}] {step}/{total}"]
    if status.loss is not None:
        parts.append(f"loss {status.loss:.4f}")
    if status.eval_loss is not None:
        parts.append(f"eval {status.eval_loss:.4f}")
    if status.learning_rate is not None:
        parts.append(f"lr {status.learning_rate:.1e}")
    if tokens_per_second:
        parts.append(f"{tokens_per_second:.0f} tok/s")
    if status.eta_seconds is not None and step < total:
        parts.append(f"ETA {format_duration(status.eta_seconds)}")
    return "  ".join(parts)


class ConsoleSink:
    """Human view on a terminal: live step checklist, training bar, final report table.

    ``live`` (default: the stream is a TTY) redraws the checklist in place; otherwise every
    change is one appended line, which reads well in ``kubectl logs``.
    """

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.status = initial_status()
        self._started: dict[int, float] = {}
        self._durations: dict[int, float] = {}
        self._drawn_lines = 0
        self._tokens_per_second: float | None = None  # not part of the status, so kept here
        self._stopped: str | None = None  # a stop signal's message: no report follows

    def _step_line(self, index: int) -> str:
        """' ✓ 4 training           2m03s  message'; cut to the terminal's width when live."""
        step = self.status.steps[index]
        duration = self._durations.get(index)
        if duration is None and self.live and step.state == "Active" and index in self._started:
            duration = time.monotonic() - self._started[index]
        shown = format_duration(duration) if duration is not None else ""
        line = f" {MARKS[step.state]} {index} {PIPELINE_STEPS[index]:<16}{shown:>7}  {step.message or ''}"
        return line[: shutil.get_terminal_size((120, 24)).columns - 1] if self.live else line.rstrip()

    def _checklist(self) -> list[str]:
        lines = [self._step_line(i) for i in range(len(PIPELINE_STEPS))]
        bar = progress_bar(self.status, self._tokens_per_second)
        if bar and self.status.steps[PIPELINE_STEPS.index("training")].state == "Active":
            lines.append("   " + bar)
        return lines

    def _write(self, lines: list[str]) -> None:
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()

    def _redraw(self) -> None:
        if self._drawn_lines:
            self.stream.write(f"\x1b[{self._drawn_lines}F\x1b[J")  # back to the block's top, clear
        lines = self._checklist()
        self._write(lines)
        self._drawn_lines = len(lines)

    def emit(self, event: TrainerEvent, status: TrainerStatus) -> None:
        self.status = status
        if isinstance(event, TrainEvent):
            self._tokens_per_second = event.tokens_per_second
        if isinstance(event, StepEvent):
            if event.state == "Active":
                self._started[event.index] = time.monotonic()
            elif event.index in self._started:
                self._durations[event.index] = time.monotonic() - self._started[event.index]
        if self.live:
            self._redraw()
        elif isinstance(event, StepEvent):
            self._write([self._step_line(event.index)])
        elif isinstance(event, TrainEvent):
            self._write(["   " + (progress_bar(self.status, self._tokens_per_second) or "")])
        elif isinstance(event, NoteEvent):
            self._write([f"   {event.message}"])
        elif isinstance(event, EvalEvent):
            self._write([f"   eval loss {event.eval_loss:.4f} at step {event.step}"])
        elif isinstance(event, MetricsEvent):
            scores = event.scores
            speed = "" if scores.bench_tokens_per_second is None else (
                f", speed {number(scores.bench_tokens_per_second)} tokens/s (±{number(scores.bench_noise_percent)}%)")
            self._write([f"   {event.which}: overall {number(scores.overall)}, weighted "
                         f"{number(scores.weighted_overall)}, held-out loss {number(scores.eval_loss)}{speed}"])
        elif isinstance(event, FailureEvent):
            self._write([f" ✗ {event.message}"])
        if isinstance(event, StopEvent):
            self._stopped = event.message
            if not self.live:
                self._write([f" ■ {event.message}"])

    def close(self, final_status: TrainerStatus) -> None:
        self.status = final_status
        if self.live:
            self._redraw()
        else:
            self._write(["", "steps:", *self._checklist()])
        failed = [s.name for s in final_status.steps if s.state == "Failed"]
        if failed:
            self._write(["", f"FAILED in {', '.join(failed)}: {final_status.message or ''}"])
            return
        if self._stopped:
            self._write(["", f"STOPPED: {self._stopped}"])
            return
        self._write(["", "report:", *report_table(final_status, xp_for(final_status)),
                     "  (XP as the operator awards it to a Succeeded run of a trusted trainer image)"])
