"""The Minion API: a trainable minion whose XP adds up across its runs (docs/minions.md).

A ``LoraTrainingJob`` names its minion in ``spec.minion``; the operator credits each finished run to the
minion once (its ledger is keyed by run UID), and derives the minion's level, progress to the next level
and the adapter it serves from that ledger. Like ``api``, these models generate the CRD.
"""

from __future__ import annotations

import itertools

from pydantic import ConfigDict, Field, model_validator

from lora_contract.api import Condition, LoraSettings, ModelSpec, Timestamp, _Model

KIND = "Minion"
PLURAL = "minions"
SINGULAR = "minion"
SHORT_NAMES = ["mn"]

# The XP a "standard run" earns: 500 distinct training items at unchanged quality (lora_contract.xp's table).
STANDARD_RUN_XP = 800
# Reaching level L + 1 from level L takes L more standard runs: 800, 2400, 4800, ... 36000 XP for level 10.
DEFAULT_LEVELS: tuple[int, ...] = tuple(STANDARD_RUN_XP * n * (n + 1) // 2 for n in range(1, 10))
LEVELS_MESSAGE = "levels: XP thresholds must be positive and strictly increasing"
# Ledger entries kept in the status; older ones are summed into ``earlier`` (totals stay exact).
LEDGER_LIMIT = 20


class MinionSpec(_Model):
    """A minion: the base model its runs train and the settings they inherit, and how XP becomes levels."""

    display_name: str | None = Field(None, max_length=63, description="Name shown to people (default: the "
                                     "resource's name).")
    model: ModelSpec = Field(description="The base model every run for this minion trains; a run without "
                             "spec.model inherits it, a run with another model is refused.")
    lora: LoraSettings | None = Field(None, description="LoRA settings a run inherits for every field it leaves "
                                      "at its default (docs/minions.md).")
    levels: list[int] = Field(
        default=list(DEFAULT_LEVELS), min_length=1, max_length=100,
        json_schema_extra={"items": {"type": "integer", "minimum": 1}},
        description="Total XP needed for level 2, 3, ... (strictly increasing). Default: level L + 1 takes "
        f"L more standard runs of {STANDARD_RUN_XP} XP (500 distinct items at unchanged quality).")

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "!has(self.levels) || (self.levels.isSorted() && "
                "self.levels.all(x, self.levels.indexOf(x) == self.levels.lastIndexOf(x)))",
        "message": LEVELS_MESSAGE}]})

    @model_validator(mode="after")
    def _increasing(self) -> MinionSpec:
        if any(x <= 0 for x in self.levels) or any(b <= a for a, b in itertools.pairwise(self.levels)):
            raise ValueError(LEVELS_MESSAGE)
        return self


class LedgerEntry(_Model):
    """One run credited to the minion."""

    run: str = Field(max_length=253)
    uid: str = Field(max_length=64)
    xp: int = Field(ge=0)
    reason: str = Field("", max_length=512, description="Why the run earned this XP, or none.")
    quality_change: float | None = Field(None, description="Weighted overall quality, after minus before.")
    loss_change: float | None = Field(None, description="Held-out loss, after minus before (negative: better).")
    finished: Timestamp | None = None
    adapter_uri: str | None = Field(None, max_length=4096)


class EarlierRuns(_Model):
    """Runs credited before the ledger's oldest entry, summed (the ledger keeps the newest LEDGER_LIMIT)."""

    runs: int = Field(0, ge=0)
    xp: int = Field(0, ge=0)
    until: Timestamp | None = Field(None, description="The newest finish time among them.")


class ServedAdapter(_Model):
    """The adapter the minion serves and the run that made it."""

    uri: str = Field(max_length=4096)
    run: str = Field(max_length=253)
    finished: Timestamp | None = None


class MinionStatus(_Model):
    """Written by the operator only, from the runs it credited (docs/minions.md)."""

    xp: int = Field(0, ge=0, description="Total XP of every credited run.")
    level: int = Field(1, ge=1)
    next_level_xp: int | None = Field(None, description="Total XP of the next level; none at the last level.")
    progress: int = Field(0, ge=0, le=100, description="Percent of the way from this level to the next.")
    runs: int = Field(0, ge=0, description="Runs credited, earlier ones included.")
    adapter: ServedAdapter | None = None
    ledger: list[LedgerEntry] = Field(default_factory=list, max_length=LEDGER_LIMIT)
    earlier: EarlierRuns | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
