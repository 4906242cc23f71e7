"""Step 4, training: the HF Trainer with progress events, divergence checks, automatic resume and
recovery from running out of GPU memory.

A checkpoint counts as complete once our callback has written its marker, which happens after
the Trainer finished writing every file of it; a pod killed mid-save leaves a folder without a
marker, which is removed, and the run resumes from the newest complete checkpoint instead.

Out of GPU memory, the step halves the micro-batch and doubles gradient accumulation (the same
items per optimizer step, so the same training), then, at a micro-batch of 1, turns on activation
checkpointing; each time it resumes from the newest complete checkpoint, or from the initial
adapter weights when there is none yet. Only when all of that still does not fit does it fail.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import PrinterCallback

from lora_contract.progress import EvalEvent, TrainerEvent, TrainEvent
from lora_trainer.context import RunContext
from lora_trainer.errors import InvalidInput, StepError
from lora_trainer.events import format_duration
from lora_trainer.modeling import release_memory

MARKER = "lora-trainer-complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def _marker(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_marker(folder: Path, fingerprint: str, step: int) -> None:
    """Atomically: a marker is either absent or complete, whenever the pod dies."""
    temporary = folder / f".{MARKER}.tmp"
    temporary.write_text(json.dumps({"fingerprint": fingerprint, "step": step}))
    os.replace(temporary, folder / MARKER)


def resume_point(folder: Path, fingerprint: str) -> Path | None:
    """Newest complete checkpoint of this spec; removes incomplete ones (no readable marker),
    refuses a different spec's."""
    newest = None
    for _, path in _checkpoints(folder):
        marker = _marker(path)
        if marker is None:
            shutil.rmtree(path)
            continue
        theirs = marker.get("fingerprint")
        if theirs != fingerprint:
            raise InvalidInput(
                f"{folder} holds checkpoints of a different spec (fingerprint {theirs}, this spec {fingerprint}); "
                "use another output folder or delete the checkpoints to start over"
            )
        newest = path
    return newest


def relocate_best(checkpoint: Path) -> None:
    """Point the resumed state's best checkpoint (an absolute path) into this output folder: the
    folder may have moved (another volume mount), and the Trainer would otherwise drop the best
    checkpoint, or load it from the old place if that still exists."""
    state_file = checkpoint / TRAINER_STATE_NAME
    state = json.loads(state_file.read_text())
    if state.get("best_model_checkpoint"):
        state["best_model_checkpoint"] = str(checkpoint.parent / Path(state["best_model_checkpoint"]).name)
        state_file.write_text(json.dumps(state, indent=2))


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


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's allocator raises OutOfMemoryError; some kernels (cuBLAS, cuDNN) report it as a RuntimeError."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def use_less_memory(args: Any) -> str | None:
    """Change ``args`` (TrainingArguments) to need less activation memory for the same training; None when
    nothing is left to try. Halving the micro-batch keeps the items per optimizer step (rounded up)."""
    batch, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    if batch > 1:
        smaller = batch // 2
        args.per_device_train_batch_size = args.per_device_eval_batch_size = smaller
        args.gradient_accumulation_steps = math.ceil(batch * accumulation / smaller)
        return (f"batch {batch} x accumulation {accumulation} -> "
                f"batch {smaller} x accumulation {args.gradient_accumulation_steps}")
    if not args.activation_checkpointing:
        args.activation_checkpointing = True
        return "activation checkpointing on"
    return None


def run(ctx: RunContext) -> str:
    plan, model = ctx.need("plan"), ctx.need("model")
    initial = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    checkpoints = Path(plan.args.output_dir)
    adjustments: list[str] = []
    started = time.monotonic()
    resume = resume_point(checkpoints, ctx.fingerprint)
    while True:
        if resume:
            relocate_best(resume)
        elif adjustments:  # the failed attempt already moved the weights: start over from the initial ones
            set_peft_model_state_dict(model, initial)
        trainer = Trainer(
            model=model, args=plan.args, train_dataset=plan.train_rows,
            eval_dataset=plan.eval_rows or None, data_collator=plan.collator, processing_class=ctx.tokenizer,
            callbacks=[ProgressCallback(ctx.emit, ctx.fingerprint, ctx.spec.lora.divergence_factor)],
        )
        trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; the events replace it
        try:
            result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            break
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            del trainer
            model.zero_grad(set_to_none=True)
            release_memory()
            change = use_less_memory(plan.args)
            if change is None:
                raise StepError(
                    "out of GPU memory even at batch 1 with activation checkpointing "
                    f"({'; '.join(adjustments)}): set model.quantization: 4bit, lower lora.maxLength, "
                    "or request a GPU with more memory") from err
            adjustments.append(change)
            resume = resume_point(checkpoints, ctx.fingerprint)
            note = f"out of GPU memory: {change}; continuing from {resume.name if resume else 'the start'}"
            print(f"lora-trainer: {note} ({err})", file=sys.stderr)
            ctx.note("training", note)
    state = trainer.state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    evals = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
    parts = [f"{state.global_step} optimizer steps in {format_duration(time.monotonic() - started)}"]
    if resume:
        parts.append(f"resumed from {resume.name}")
    if adjustments:
        parts.append("out of GPU memory, adjusted: " + "; ".join(adjustments))
    if losses:
        parts.append(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} (mean {result.training_loss:.4f})")
    if evals:
        parts.append(f"eval loss {evals[-1]:.4f}")
    if state.best_model_checkpoint and plan.args.load_best_model_at_end:
        parts.append(f"best: {Path(state.best_model_checkpoint).name}")
    return "; ".join(parts)
