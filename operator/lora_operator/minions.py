"""Pure minion logic: what a run inherits from its minion, and what crediting a finished run does to the
minion's status (ledger, XP, level, the adapter it serves). No API calls here: ``minion_controller`` reads
and writes; these functions decide (docs/minions.md)."""

from __future__ import annotations

import bisect
from typing import Any

from lora_contract.api import LoraSettings, LoraTrainingJobStatus
from lora_contract.minion import LEDGER_LIMIT, EarlierRuns, LedgerEntry, MinionSpec, MinionStatus, ServedAdapter

# The run's own LoRA settings that count as "not set" (their CRD default), which the minion's replace.
_LORA_DEFAULTS = LoraSettings().model_dump(by_alias=True, mode="json")


class ModelMismatch(ValueError):
    """A run for a minion names another base model than the minion's."""


def inherit(minion: str, minion_spec: MinionSpec, run_spec: dict[str, Any]) -> dict[str, Any]:
    """The spec a run for ``minion`` trains with: the minion's model when the run has none, and the minion's
    LoRA settings for every field the run leaves at its default. A run with its own, different model is
    refused: its adapter would not fit the base model the minion serves."""
    model = minion_spec.model.model_dump(by_alias=True, mode="json", exclude_none=True)
    own = run_spec.get("model")
    if own is not None and {k: v for k, v in own.items() if v is not None} != model:
        raise ModelMismatch(f"spec.model differs from the model of Minion {minion} ({_describe(model)}): a run "
                            "for a minion trains its base model; omit spec.model to inherit it")
    effective = {**run_spec, "model": model}
    if minion_spec.lora is not None:
        theirs = minion_spec.lora.model_dump(by_alias=True, mode="json")
        mine = run_spec.get("lora") or {}
        effective["lora"] = {**theirs, **{k: v for k, v in mine.items() if v != _LORA_DEFAULTS.get(k)}}
    return effective


def _describe(model: dict[str, Any]) -> str:
    source = next((f"{k} {model[k]}" for k in ("hubId", "path", "package") if model.get(k)), "?")
    return source + (f", {model['quantization']}" if model.get("quantization", "none") != "none" else "")


def level_of(xp: int, levels: list[int]) -> tuple[int, int | None, int]:
    """(level, total XP of the next level or None at the last, percent of the way there). Level 1 below the
    first threshold; each threshold reached adds one."""
    reached = bisect.bisect_right(levels, xp)
    if reached == len(levels):
        return reached + 1, None, 100
    low = levels[reached - 1] if reached else 0
    return reached + 1, levels[reached], int(100 * (xp - low) / (levels[reached] - low))


def ledger_entry(run: str, uid: str, status: LoraTrainingJobStatus) -> LedgerEntry:
    """A finished run as the minion's ledger records it: its XP (0 and why, when it earned none), quality and
    held-out loss change, finish time and adapter."""
    trainer = status.trainer
    before, after = (trainer.before, trainer.after) if trainer else (None, None)
    quality = loss = None
    if before and after:
        if before.weighted_overall is not None and after.weighted_overall is not None:
            quality = round(after.weighted_overall - before.weighted_overall, 2)
        if before.eval_loss is not None and after.eval_loss is not None:
            loss = round(after.eval_loss - before.eval_loss, 4)
    awarded = next((c for c in status.conditions if c.type == "XPAwarded"), None)
    if status.phase != "Succeeded":
        reason = f"{status.phase}: {status.message or 'no message'}"
    else:
        reason = awarded.message if awarded else "no XP decision"
    adapter = trainer.artifacts.adapter_uri if trainer and trainer.artifacts else None
    return LedgerEntry(run=run, uid=uid, xp=(status.xp or 0) if status.phase == "Succeeded" else 0,
                       reason=reason[:512], quality_change=quality, loss_change=loss,
                       finished=status.completion_time, adapter_uri=adapter)


def serves(entry: LedgerEntry) -> bool:
    """The rule for the minion's adapter: a run that earned XP, did not make quality worse, and whose adapter
    outlives its pod (the trainer reports an adapterUri only for a volume, a bucket, a registry or the hub)."""
    return entry.xp > 0 and (entry.quality_change is None or entry.quality_change >= 0) and bool(entry.adapter_uri)


def credit(status: MinionStatus, entry: LedgerEntry, levels: list[int]) -> MinionStatus | None:
    """The minion's status with ``entry`` credited; None when its run (by UID) is in the ledger already.
    Totals stay exact when the oldest entries are summed into ``earlier``."""
    if any(e.uid == entry.uid for e in status.ledger):
        return None
    ledger = sorted([*status.ledger, entry], key=lambda e: e.finished or "")
    earlier = status.earlier.model_copy() if status.earlier else EarlierRuns()
    for old in ledger[:-LEDGER_LIMIT]:
        earlier.runs, earlier.xp = earlier.runs + 1, earlier.xp + old.xp
        earlier.until = max(earlier.until or "", old.finished or "") or None
    ledger = ledger[-LEDGER_LIMIT:]
    new = status.model_copy(update={"ledger": ledger, "earlier": earlier if earlier.runs else None})
    new.xp = earlier.xp + sum(e.xp for e in ledger)
    new.runs = earlier.runs + len(ledger)
    new.level, new.next_level_xp, new.progress = level_of(new.xp, levels)
    current = status.adapter
    if serves(entry) and (current is None or (entry.finished or "") >= (current.finished or "")):
        new.adapter = ServedAdapter(uri=entry.adapter_uri or "", run=entry.run, finished=entry.finished)
    return new


def relevel(status: MinionStatus, levels: list[int]) -> MinionStatus:
    """The status under a new level table (an edited spec.levels): XP and ledger unchanged."""
    level, next_xp, progress = level_of(status.xp, levels)
    return status.model_copy(update={"level": level, "next_level_xp": next_xp, "progress": progress})
