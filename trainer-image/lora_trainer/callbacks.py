"""Step 4's Trainer callback: progress events, complete-checkpoint markers and divergence checks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from lora_contract.progress import EvalEvent, TrainerEvent, TrainEvent
from lora_trainer.checkpoints import write_marker
from lora_trainer.errors import InvalidInput


class ProgressCallback(TrainerCallback):
    """Turns Trainer logs into TrainEvent/EvalEvent, marks complete checkpoints, stops divergence."""

    def __init__(self, emit: Callable[[TrainerEvent], None], fingerprint: str, divergence_factor: float) -> None:
        self.emit, self.fingerprint, self.divergence_factor = emit, fingerprint, divergence_factor
        self.started = time.monotonic()
        self.start_step = self.start_tokens = 0

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

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        write_marker(Path(args.output_dir) / f"checkpoint-{state.global_step}", self.fingerprint, state.global_step)
