"""Step 4, training: the HF Trainer with progress events, divergence checks, automatic resume,
recovery from running out of GPU memory, and a checkpoint at a stop signal (lora_trainer.callbacks,
.checkpoints, .memory_ladder and .signals).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers.trainer_callback import PrinterCallback

from lora_trainer import distributed, sharding
from lora_trainer.callbacks import ProgressCallback
from lora_trainer.checkpoints import check_strategy, finished_state, newest_complete, relocate_best, resume_point
from lora_trainer.context import RunContext
from lora_trainer.errors import StepError
from lora_trainer.events import format_duration
from lora_trainer.loss import LabelledLogitsTrainer
from lora_trainer.memory_ladder import (
    SETTINGS,
    apply_plan,
    is_out_of_memory,
    load_plan,
    save_plan,
    use_less_memory,
)
from lora_trainer.modeling import apply_lora, load_model, release_memory


def run(ctx: RunContext) -> str:
    done = _train(ctx)
    return f"{done}; {_gathered(ctx)}" if ctx.strategy.sharded else done


def _gathered(ctx: RunContext) -> str:
    """After FSDP training every process holds a shard of the model, and all but rank 0 are about to exit:
    the adapter is gathered (only its tensors, not the base weights) and rank 0 puts it on a fresh copy of
    the base model, loaded where its steps 5 to 9 grade (``RunContext.evaluation_placement``). Merging is
    not done inside FSDP (peft's FSDP guide lists it as unsupported); step 5 merges this copy."""
    sharded = ctx.lora_model
    local, total = sharding.shard_share(sharded)
    full = sharding.full_adapter(sharded)
    if not ctx.world.is_main:
        return ""
    adapter = get_peft_model_state_dict(sharded, state_dict=full)
    ctx.model = ctx.loaded = sharded = None
    release_memory()
    ctx.loaded = load_model(ctx.spec.model, ctx.dtype, ctx.evaluation_placement)
    ctx.model = apply_lora(ctx.loaded, ctx.spec.lora)
    set_peft_model_state_dict(ctx.model, adapter)
    held = (f"FSDP: rank 0 held {local / total:.1%} of the {total / 1e6:.2f}M parameters; " if local < total
            else "FSDP: ")
    return f"{held}the adapter ({len(adapter)} tensors) gathered onto a fresh copy of the base model"


def _train(ctx: RunContext) -> str:
    plan, model = ctx.training_plan, ctx.lora_model
    initial = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    checkpoints = Path(plan.args.output_dir)
    started = time.monotonic()
    mirror = ctx.checkpoint_mirror  # rank 0's (the other workers of a data-parallel run open no destination)
    fetched = mirror.pull() if mirror else None  # a retry on a node without the volume's checkpoints
    # Rank 0 tidies the checkpoints (removes incomplete ones, relocates the best one) before the others read them.
    resume = _resume_point(checkpoints, ctx.fingerprint) if ctx.world.is_main else None
    distributed.barrier()
    if not ctx.world.is_main:
        resume = resume_point(checkpoints, ctx.fingerprint)
    done = finished_state(resume) if resume else None
    source = f" ({fetched} fetched from {ctx.buckets[0].dest.uri})" if fetched else ""
    if resume and done:
        return _finished_earlier(model, resume, done, plan.args.load_best_model_at_end) + source
    if resume:
        check_strategy(resume, ctx.strategy.sharded)
    # A data-parallel group that ran out of memory left its next rung: every worker applies it, and so does a
    # retry in one process (a group that shrank).
    saved = load_plan(checkpoints, ctx.fingerprint)
    adjustments = apply_plan(plan.args, saved) if saved else []
    if adjustments:
        ctx.note("training", "out of GPU memory in an earlier attempt, adjusted: " + "; ".join(adjustments))
    while True:
        trainer = LabelledLogitsTrainer(
            model=model, args=plan.args, train_dataset=plan.train_rows,
            eval_dataset=plan.eval_rows or None, data_collator=plan.collator, processing_class=ctx.tokenizer,
            callbacks=[ProgressCallback(ctx.emit, ctx.fingerprint, ctx.spec.lora.divergence_factor, ctx.signals,
                                        mirror.push if mirror else None)],
        )
        trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; the events replace it
        try:
            with ctx.signals.deferred():  # a stop signal: a checkpoint after this optimizer step, then stop
                result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            break
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                peer = load_plan(checkpoints, ctx.fingerprint) if ctx.world.distributed else None
                if peer is not None and peer != saved:  # a peer ran out, wrote its plan and left our collective
                    raise StepError(peer["message"]) from err
                raise
            if ctx.world.distributed:
                raise _stop_the_group(ctx, checkpoints, adjustments) from err
            del trainer
            model.zero_grad(set_to_none=True)
            release_memory()
            change = use_less_memory(plan.args)
            if change is None:
                raise StepError(_nothing_left(adjustments)) from err
            adjustments.append(change)
            resume = _resume_point(checkpoints, ctx.fingerprint)
            if not resume:  # the failed attempt may have taken optimizer steps: start from the initial weights
                set_peft_model_state_dict(model, initial)
            note = f"out of GPU memory: {change}; continuing from {resume.name if resume else 'the start'}"
            print(f"lora-trainer: {note} ({err})", file=sys.stderr)
            ctx.note("training", note)
    state = trainer.state
    parts = [f"{state.global_step} optimizer steps in {format_duration(time.monotonic() - started)}"]
    if resume:
        parts.append(f"resumed from {resume.name}{source}")
    if adjustments:
        parts.append("out of GPU memory, adjusted: " + "; ".join(adjustments))
    best = state.best_model_checkpoint if plan.args.load_best_model_at_end else None
    return "; ".join(parts + _curves(state.log_history, best, f" (mean {result.training_loss:.4f})"))


def _nothing_left(adjustments: list[str]) -> str:
    """The ladder's end, worded alike for one process and for a data-parallel group."""
    return ("out of GPU memory even at batch 1 with activation checkpointing "
            f"({'; '.join(adjustments)}): set model.quantization: 4bit, lower lora.maxLength, "
            "or request a GPU with more memory")


def _stop_the_group(ctx: RunContext, checkpoints: Path, adjustments: list[str]) -> StepError:
    """Out of memory in a data-parallel worker: the others wait for it in a collective, so it cannot retry
    alone. It saves the next rung as the plan of the group's retry (the Job's, or the operator's group
    restart) and fails with exit code 1; the message goes into the plan too, so that rank 0, whose collective
    breaks when this worker exits, reports it as the run's failure."""
    settings = SimpleNamespace(**{name: getattr(ctx.training_plan.args, name) for name in SETTINGS})
    change = use_less_memory(settings)
    if change is None:
        message = _nothing_left(adjustments)
    else:
        adjustments = [*adjustments, change]
        message = (f"out of GPU memory on worker rank {ctx.world.rank}: the group stops; its retry resumes from "
                   f"{newest.name if (newest := newest_complete(checkpoints)) else 'the start'} with "
                   f"{_describe(settings)}")
    save_plan(checkpoints, ctx.fingerprint, settings, adjustments, message, ctx.world.rank)
    print(f"lora-trainer: {message}", file=sys.stderr)  # this worker's log: only rank 0 reports
    return StepError(message)


def _describe(settings: Any) -> str:
    checkpointing = " and activation checkpointing" if settings.activation_checkpointing else ""
    return (f"batch {settings.per_device_train_batch_size} x accumulation "
            f"{settings.gradient_accumulation_steps}{checkpointing}")


def _resume_point(checkpoints: Path, fingerprint: str) -> Path | None:
    """The newest complete checkpoint, its best checkpoint looked up in this folder (``relocate_best``)."""
    resume = resume_point(checkpoints, fingerprint)
    if resume:
        relocate_best(resume)
    return resume


def _curves(log_history: list[dict], best: str | None, mean: str = "") -> list[str]:
    """The step message's loss, eval loss and best checkpoint, from the Trainer's log history."""
    losses = [h["loss"] for h in log_history if "loss" in h]
    evals = [h["eval_loss"] for h in log_history if "eval_loss" in h]
    return ([f"loss {losses[0]:.4f} -> {losses[-1]:.4f}{mean}"] if losses else []) + (
        [f"eval loss {evals[-1]:.4f}"] if evals else []) + ([f"best: {Path(best).name}"] if best else [])


def _finished_earlier(model: torch.nn.Module, resume: Path, state: dict, load_best: bool) -> str:
    """An earlier attempt trained every step and was stopped after (saving, grading): take its weights, as the
    Trainer would have left them (the best checkpoint's, with load_best_model_at_end), without training."""
    best = state.get("best_model_checkpoint") if load_best else None  # relocated into this folder
    source = Path(best) if best and Path(best).is_dir() else resume
    set_peft_model_state_dict(model, load_file(source / "adapter_model.safetensors"))
    parts = [f"{state['global_step']} optimizer steps, all in an earlier attempt; resumed from {resume.name}"]
    return "; ".join(parts + _curves(state["log_history"], str(source) if best else None))
