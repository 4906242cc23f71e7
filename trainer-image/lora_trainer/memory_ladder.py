"""Step 4's out-of-memory ladder: what to change when training runs out of GPU memory.

Out of GPU memory, the step halves the micro-batch and doubles gradient accumulation (the same
items per optimizer step, so the same training), then, at a micro-batch of 1, turns on activation
checkpointing; each time it resumes from the newest complete checkpoint, or from the initial
adapter weights when there is none yet. Only when all of that still does not fit does it fail.

A data-parallel group cannot climb the ladder in-process: the other workers wait for the one that ran out
in a collective (the gradient all-reduce), so it cannot retry alone. There the worker that ran out saves
the next rung as a plan (``save_plan``, in the checkpoints folder) and the group fails; every worker of
the retry applies the plan (``load_plan``, ``apply_plan``) before it builds its Trainer.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

import torch

PLAN_FILE = "out-of-memory-plan.json"
# The TrainingArguments a rung changes, as a plan stores them.
SETTINGS = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
            "activation_checkpointing")


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


def save_plan(folder: Path, fingerprint: str, settings: Any, adjustments: list[str], message: str,
              rank: int) -> None:
    """Write the plan for the group's retry: ``settings`` (an object with the ``SETTINGS``), the adjustments so
    far and ``message`` (the failure the workers report). Atomically, through a temporary file of this rank:
    several workers may run out at once. Each write gets its own id, so a worker whose collective broke can
    tell a plan written by a peer during its attempt from the one it started with."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = {"fingerprint": fingerprint, **{name: getattr(settings, name) for name in SETTINGS},
            "adjustments": adjustments, "message": message, "id": uuid.uuid4().hex}
    temporary = folder / f".{PLAN_FILE}.{rank}.tmp"
    temporary.write_text(json.dumps(plan, indent=2))
    os.replace(temporary, folder / PLAN_FILE)


def load_plan(folder: Path, fingerprint: str) -> dict[str, Any] | None:
    """The plan in ``folder``, or None: none, unreadable, or another spec's (its fingerprint differs: another
    spec's batch sizes mean nothing for this one)."""
    try:
        plan = json.loads((folder / PLAN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) and plan.get("fingerprint") == fingerprint else None


def apply_plan(args: Any, plan: dict[str, Any]) -> list[str]:
    """Take the plan's micro-batch (never a larger one) and activation checkpointing into ``args``; returns its
    adjustments. Accumulation is recomputed from ``args``' own items per optimizer step, as ``use_less_memory``
    does, not copied: a retry with another number of workers has another share of the global batch."""
    items = args.per_device_train_batch_size * args.gradient_accumulation_steps
    args.per_device_train_batch_size = min(args.per_device_train_batch_size, plan["per_device_train_batch_size"])
    args.per_device_eval_batch_size = min(args.per_device_eval_batch_size, plan["per_device_eval_batch_size"])
    args.gradient_accumulation_steps = math.ceil(items / args.per_device_train_batch_size)
    args.activation_checkpointing = args.activation_checkpointing or plan["activation_checkpointing"]
    return list(plan["adjustments"])
