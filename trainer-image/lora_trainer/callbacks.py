"""Step 4's Trainer callback: progress events, complete-checkpoint markers, divergence checks, and the
checkpoint that a stop signal asks for (``lora_trainer.signals``).

In a data-parallel run every worker runs it: the decision to stop is taken by all of them at the same
optimizer step (``distributed.agree``), and rank 0 writes the completion marker once every rank has saved
its part of the checkpoint. Events come from rank 0 only (the other workers have no sinks)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from lora_contract.api import PIPELINE_STEPS
from lora_contract.progress import EvalEvent, NoteEvent, TrainerEvent, TrainEvent
from lora_trainer import distributed
from lora_trainer.checkpoints import write_marker
from lora_trainer.errors import InvalidInput
from lora_trainer.signals import StopSignals

TRAINING_STEP = PIPELINE_STEPS.index("training")  # the pipeline step this callback runs in


class ProgressCallback(TrainerCallback):
    """Turns Trainer logs into TrainEvent/EvalEvent, marks complete checkpoints, stops divergence, and on a
    stop signal saves a checkpoint at the end of the optimizer step in progress, then stops the run."""

    def __init__(self, emit: Callable[[TrainerEvent], None], fingerprint: str, divergence_factor: float,
                 signals: StopSignals | None = None, mirror: Callable[[Path], None] | None = None) -> None:
        self.emit, self.fingerprint, self.divergence_factor = emit, fingerprint, divergence_factor
        self.mirror = mirror  # copies a complete checkpoint to the first s3:// output destination
        self.signals = signals or StopSignals()  # not installed: no signal ever comes
        self.started = time.monotonic()
        self.start_step = self.start_tokens = 0
        self._announced = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.monotonic()
        self.start_step, self.start_tokens = state.global_step, state.num_input_tokens_seen

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        logs = logs or {}
        if "loss" in logs:
            loss = float(logs["loss"])
            self._check(loss, state)
            elapsed = time.monotonic() - self.started
            done = state.global_step - self.start_step
            tokens = state.num_input_tokens_seen - self.start_tokens
            self.emit(TrainEvent(
                step=state.global_step, total_steps=state.max_steps, loss=loss,
                learning_rate=logs.get("learning_rate"), epoch=state.epoch,
                tokens_per_second=round(tokens / elapsed, 1) if elapsed > 0 and tokens else None,
                eta_seconds=round(elapsed / done * (state.max_steps - state.global_step), 1) if done else None,
            ))
        if "eval_loss" in logs:
            eval_loss = float(logs["eval_loss"])
            if not math.isfinite(eval_loss):
                raise InvalidInput(f"training diverged: eval loss is {eval_loss} at step {state.global_step}; "
                                   "lower lora.learningRate or check the data")
            self.emit(EvalEvent(step=state.global_step, eval_loss=eval_loss))

    def _check(self, loss: float, state: Any) -> None:
        """NaN/inf, or more than divergenceFactor x the first logged loss (kept across resumes)."""
        if not math.isfinite(loss):
            raise InvalidInput(f"training diverged: loss is {loss} at step {state.global_step}; "
                               "lower lora.learningRate or check the data")
        first = next(h["loss"] for h in state.log_history if "loss" in h)
        if loss > self.divergence_factor * first:
            raise InvalidInput(
                f"training diverged: loss {loss:.4f} at step {state.global_step} exceeds "
                f"{self.divergence_factor:g} x the first logged loss {first:.4f}; lower lora.learningRate"
            )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """After an optimizer step (the boundary where the weights, optimizer and scheduler agree): on a stop
        signal (to any worker), save now and skip an evaluation due here (it would only delay the save)."""
        if distributed.agree(self.signals.requested):
            self.signals.request()
            self._save_for_stop(state, control)
            control.should_evaluate = False

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A signal that came during an evaluation: the step before it is whole, so save it."""
        if distributed.agree(self.signals.requested):
            self.signals.request()
            self._save_for_stop(state, control)

    def _save_for_stop(self, state: Any, control: Any) -> None:
        control.should_save = True
        if not self._announced:
            self._announced = True
            self.emit(NoteEvent(index=TRAINING_STEP, message=f"stop signal: saving checkpoint-{state.global_step} "
                                f"at optimizer step {state.global_step}/{state.max_steps}, then stopping"))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        checkpoint = f"checkpoint-{state.global_step}"
        distributed.barrier()  # every worker has written its part (its RNG state) of the checkpoint
        if state.is_world_process_zero:
            write_marker(Path(args.output_dir) / checkpoint, self.fingerprint, state.global_step)
            if self.mirror:  # the stop signal's checkpoint too: the retry may start on another node
                self.mirror(Path(args.output_dir) / checkpoint)
        # Raised here, after the marker and before anything the Trainer does at the end of training (which,
        # with save_total_limit 1, would delete every checkpoint but the best one).
        if self.signals.requested:
            raise self.signals.interrupt(checkpoint=checkpoint, step=state.global_step, total=state.max_steps)
