"""Step 3, training-config: TrainingArguments from the spec and its hardware profile (``profiles``),
labelled rows and the collator.

Packing concatenates each micro-batch into one padding-free row whose position ids restart
per item, so attention never crosses items (docs/trainer.md).

The step also checks that the output volume can hold what the run will write (checkpoints, adapter,
merged model) before any GPU time is spent on training that could not be saved.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, TrainingArguments

from lora_contract.api import LoraSettings
from lora_trainer.context import RunContext, TrainingPlan
from lora_trainer.destinations import open_stores
from lora_trainer.distributed import per_rank_batch
from lora_trainer.errors import InvalidInput
from lora_trainer.formats import IGNORE_INDEX, Example, features
from lora_trainer.layout import OutputLayout
from lora_trainer.profiles import Resolved, for_this_machine
from lora_trainer.sharding import fsdp_arguments
from lora_trainer.steps.saving import folder_bytes, human_bytes

DISK_MARGIN = 1.1  # tokenizer files, configs, the manifest and the report, filesystem overhead
# Bytes per trainable parameter in a checkpoint: the fp32 adapter weights plus AdamW's two fp32 moments.
CHECKPOINT_BYTES_PER_PARAMETER = 4 + 8


def optimizer_steps(items: int, batch: int, accumulation: int, epochs: float, max_steps: int | None) -> int:
    """What the Trainer will run: ceil(epochs x ceil(batches / accumulation)), or maxSteps."""
    if max_steps:
        return max_steps
    batches = math.ceil(items / batch)
    per_epoch = max(1, math.ceil(batches / accumulation))
    return math.ceil(epochs * per_epoch)


def rows(examples: list[Example], lora: LoraSettings) -> list[dict[str, list[int]]]:
    return [f for e in examples if (f := features(e, lora.max_length, lora.completion_only_loss)) is not None]


def collator(tokenizer: Any, packing: bool) -> Any:
    if packing:
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX)


def uses_packing(lora: LoraSettings) -> bool:
    """Unset means on: every process trains on one device, where a packed micro-batch is one padding-free row."""
    return lora.packing if lora.packing is not None else True


def training_arguments(lora: LoraSettings, r: Resolved, output: Path, has_eval: bool, cuda: bool,
                       sharding: dict[str, Any] | None = None) -> Any:
    """``sharding``: FSDP's arguments (``sharding.fsdp_arguments``), for a sharded run."""
    # The best checkpoint by eval loss can be restored only if every save follows an evaluation.
    keep_best = has_eval and lora.save_steps % lora.eval_steps == 0
    return TrainingArguments(
        output_dir=str(output),
        per_device_train_batch_size=r.batch_size,
        per_device_eval_batch_size=r.batch_size,
        gradient_accumulation_steps=r.gradient_accumulation_steps,
        num_train_epochs=r.epochs,
        max_steps=lora.max_steps or -1,
        learning_rate=lora.learning_rate,
        lr_scheduler_type=lora.lr_scheduler_type,
        warmup_steps=lora.warmup_steps if lora.warmup_steps is not None else lora.warmup_ratio,
        weight_decay=lora.weight_decay,
        max_grad_norm=lora.max_grad_norm,
        adam_beta1=lora.adam_beta1,
        adam_beta2=lora.adam_beta2,
        adam_epsilon=lora.adam_epsilon,
        optim="adamw_torch",
        fp16=r.fp16,
        bf16=r.bf16,
        use_cpu=not cuda,
        activation_checkpointing=lora.gradient_checkpointing,
        logging_steps=lora.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss must reach the divergence check
        eval_strategy="steps" if has_eval else "no",
        eval_steps=lora.eval_steps,
        save_strategy="steps",
        save_steps=lora.save_steps,
        save_total_limit=lora.save_total_limit,
        load_best_model_at_end=keep_best,
        metric_for_best_model="eval_loss" if keep_best else None,
        greater_is_better=False if keep_best else None,
        label_names=["labels"],
        prediction_loss_only=True,  # evaluation needs the loss only: no logits kept over the validation split
        remove_unused_columns=False,
        dataloader_pin_memory=cuda,
        report_to="none",
        disable_tqdm=True,
        seed=lora.seed,
        data_seed=lora.seed,
        **(sharding or {}),
    )


def bytes_to_write(trainable: int, frozen: int, dtype_bytes: int, merge: bool, checkpoints_kept: int) -> dict[str, int]:
    """What the run writes, by part. The Trainer writes a new checkpoint before it deletes the oldest,
    and may keep the best one beside the newest: up to saveTotalLimit + 1 exist at once."""
    return {
        "checkpoints": (checkpoints_kept + 1) * trainable * CHECKPOINT_BYTES_PER_PARAMETER,
        "adapter": trainable * 4,
        "merged model": frozen * dtype_bytes if merge else 0,
    }


def check_disk_space(output: Path, parts: dict[str, int], free: int) -> str:
    """Fail before training when the output volume cannot hold the results; what an earlier attempt
    already wrote there (checkpoints, a saved model) is overwritten, so it is not counted twice."""
    already = sum(folder_bytes(folder) for folder in OutputLayout(output).rewritten_by_a_retry)
    need = max(0, round(sum(parts.values()) * DISK_MARGIN) - already)
    listing = ", ".join(f"{name} {human_bytes(size)}" for name, size in parts.items() if size)
    if need > free:
        raise InvalidInput(
            f"the output volume has {human_bytes(free)} free at {output} but this run writes about "
            f"{human_bytes(need)} ({listing}, plus {DISK_MARGIN - 1:.0%} margin): use a larger output.claimName "
            "volume, lower lora.saveTotalLimit, or set output.merge: false")
    return f"disk: about {human_bytes(need)} to write ({listing}), {human_bytes(free)} free"


def run(ctx: RunContext) -> str:
    lora, data = ctx.spec.lora, ctx.dataset
    cuda, world = torch.cuda.is_available(), ctx.world
    r = for_this_machine(lora)
    train_rows, eval_rows = rows(data.train, lora), rows(data.validation, lora)
    # The spec's global batch, split over the workers; the one-process number of optimizer steps.
    device_batch, accumulation = per_rank_batch(r.batch_size, r.gradient_accumulation_steps, world.size)
    total = optimizer_steps(len(train_rows), r.batch_size, r.gradient_accumulation_steps, r.epochs, lora.max_steps)
    fsdp = fsdp_arguments(ctx.lora_model) if ctx.strategy.sharded else None
    args = training_arguments(lora, replace(r, batch_size=device_batch, gradient_accumulation_steps=accumulation),
                              ctx.layout.checkpoints, bool(eval_rows), cuda, fsdp)
    if world.distributed:
        args.max_steps = total  # DistributedSampler pads each rank's share: epochs would round differently
    # One process trains on one GPU: several GPUs are several processes (DDP), never nn.DataParallel.
    args._n_gpu = min(args.n_gpu, 1)
    packing = uses_packing(lora)
    args.include_num_input_tokens_seen = "all" if packing else "non_padding"  # a packed batch has no padding
    ctx.plan = TrainingPlan(args, train_rows, eval_rows, collator(ctx.tokenizer, packing))
    precision = "bf16" if r.bf16 else "fp16" if r.fp16 else "fp32"
    warmup = f"{lora.warmup_steps} steps" if lora.warmup_steps is not None else f"{lora.warmup_ratio:.0%}"
    split = f"{device_batch} x accumulation {accumulation} x {world.size} processes" if world.distributed else (
        f"{r.batch_size} x accumulation {r.gradient_accumulation_steps}")
    parts = [
        f"{r.profile} profile: batch {split} = {r.batch_size * r.gradient_accumulation_steps} items/step, "
        f"{total} optimizer steps "
        + ("(maxSteps)" if lora.max_steps else f"({r.epochs:g} epochs of {len(train_rows)} items)"),
        f"lr {lora.learning_rate:g} {lora.lr_scheduler_type}, warmup {warmup}, {precision}",
        f"loss on {'answers only' if lora.completion_only_loss else 'all tokens'}, "
        f"packing {'on (padding-free)' if packing else 'off'}{'' if lora.packing is not None else ' (default)'}",
    ]
    if ctx.strategy.name != "single":
        parts.insert(1, f"{ctx.strategy.name.upper()} ({ctx.strategy.reason})")
    if args.load_best_model_at_end:
        parts.append("best checkpoint by eval loss restored at the end")
    if r.from_profile:
        parts.append("from profile: " + ", ".join(r.from_profile))
    trainable, total = ctx.lora_model.get_nb_trainable_parameters()
    written = bytes_to_write(trainable, total - trainable, r.dtype.itemsize, ctx.spec.output.merge,
                             lora.save_total_limit)
    parts.append(check_disk_space(ctx.output_dir, written, shutil.disk_usage(ctx.output_dir).free))
    if world.is_main:  # rank 0 uploads for the run
        ctx.stores = open_stores(ctx.spec.output.destinations)
        parts += [store.check_writable() for store in ctx.stores]  # wrong keys fail here, not after training
    return "; ".join([*parts, *r.notes])
