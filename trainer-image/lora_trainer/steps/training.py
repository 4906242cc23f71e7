"""Step 4, training: the HF Trainer with progress events, divergence checks, automatic resume,
recovery from running out of GPU memory, and a checkpoint at a stop signal (lora_trainer.callbacks,
.checkpoints, .memory_ladder and .signals).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from transformers.trainer_callback import PrinterCallback

from lora_trainer.callbacks import ProgressCallback
from lora_trainer.checkpoints import relocate_best, resume_point
from lora_trainer.context import RunContext
from lora_trainer.errors import StepError
from lora_trainer.events import format_duration
from lora_trainer.loss import LabelledLogitsTrainer
from lora_trainer.memory_ladder import is_out_of_memory, use_less_memory
from lora_trainer.modeling import release_memory


def run(ctx: RunContext) -> str:
    plan, model = ctx.training_plan, ctx.lora_model
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
        trainer = LabelledLogitsTrainer(
            model=model, args=plan.args, train_dataset=plan.train_rows,
            eval_dataset=plan.eval_rows or None, data_collator=plan.collator, processing_class=ctx.tokenizer,
            callbacks=[ProgressCallback(ctx.emit, ctx.fingerprint, ctx.spec.lora.divergence_factor, ctx.signals)],
        )
        trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; the events replace it
        try:
            with ctx.signals.deferred():  # a stop signal: a checkpoint after this optimizer step, then stop
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
