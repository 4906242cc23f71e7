"""Step 4's checkpoint bookkeeping: which checkpoints are complete, and where training resumes.

A checkpoint counts as complete once our callback has written its marker, which happens after
the Trainer finished writing every file of it; a pod killed mid-save leaves a folder without a
marker, which is removed, and the run resumes from the newest complete checkpoint instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from transformers.trainer import OPTIMIZER_NAME_BIN, TRAINER_STATE_NAME

from lora_trainer.errors import InvalidInput

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


def newest_complete(folder: Path) -> Path | None:
    """The newest checkpoint with a marker, looked up without ``resume_point``'s tidying: a worker other than
    rank 0 must not remove the checkpoint whose marker rank 0 may be writing right now."""
    return next((path for _, path in reversed(_checkpoints(folder)) if _marker(path) is not None), None)


def relocate_best(checkpoint: Path) -> None:
    """Point the resumed state's best checkpoint (an absolute path) into this output folder: the
    folder may have moved (another volume mount), and the Trainer would otherwise drop the best
    checkpoint, or load it from the old place if that still exists."""
    state_file = checkpoint / TRAINER_STATE_NAME
    state = json.loads(state_file.read_text())
    if state.get("best_model_checkpoint"):
        state["best_model_checkpoint"] = str(checkpoint.parent / Path(state["best_model_checkpoint"]).name)
        temporary = state_file.with_name(f".{TRAINER_STATE_NAME}.tmp")  # never a half-written state to read
        temporary.write_text(json.dumps(state, indent=2))
        os.replace(temporary, state_file)


def finished_state(checkpoint: Path) -> dict[str, Any] | None:
    """The Trainer state saved in ``checkpoint`` if training was over there (its last step, the one a
    retry after training finds when a later step was cut short), else None. The Trainer, resumed from it,
    would run one more optimizer step past ``max_steps``."""
    state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    return state if state.get("max_steps") and state.get("global_step", 0) >= state["max_steps"] else None


def check_strategy(checkpoint: Path, sharded: bool) -> None:
    """A checkpoint's optimizer state is resumed only under the kind of training that saved it: FSDP saves it
    keyed by parameter name (``optimizer.bin``, which any FSDP world size reloads), one process and DDP by
    position (``optimizer.pt``), and the Trainer cannot read one as the other. Refused with what to change,
    rather than resumed with a fresh optimizer or failing in the Trainer's loader."""
    saved_sharded = (checkpoint / OPTIMIZER_NAME_BIN).is_file()
    if saved_sharded == sharded:
        return
    saved, now = ("FSDP", "one process or DDP") if saved_sharded else ("one process or DDP", "FSDP")
    fix = "resources.strategy: fsdp with more than one process" if saved_sharded else "resources.strategy: ddp"
    raise InvalidInput(f"{checkpoint.name} was saved by {saved} training and this attempt trains with {now}: its "
                       f"optimizer state cannot be resumed across the two; set {fix} to resume from it, or delete "
                       f"{checkpoint.parent} to start over")
