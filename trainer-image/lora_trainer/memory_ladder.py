"""Step 4's out-of-memory ladder: what to change when training runs out of GPU memory.

Out of GPU memory, the step halves the micro-batch and doubles gradient accumulation (the same
items per optimizer step, so the same training), then, at a micro-batch of 1, turns on activation
checkpointing; each time it resumes from the newest complete checkpoint, or from the initial
adapter weights when there is none yet. Only when all of that still does not fit does it fail.
"""

from __future__ import annotations

import math
from typing import Any

import torch


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
