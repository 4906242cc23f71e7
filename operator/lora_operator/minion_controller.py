"""The Minion controller: reads minions for the runs that name them, credits finished runs to them, and keeps
each minion's own status (level under its level table, observedGeneration, Ready).

Every write to a Minion's status is a replace at the resourceVersion it was computed from: two runs finishing
together both get credited (the loser of the race reads again and retries), and a credit is never applied
to a status it did not see. The decisions are ``minions``' pure functions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from lora_contract import api
from lora_contract.minion import LedgerEntry, MinionSpec, MinionStatus
from lora_operator import minions
from lora_operator import reasons as R
from lora_operator.kube import Kube
from lora_operator.status import set_condition

# Conflicts tolerated in a row before a credit is left to the next try (the caller retries later).
CONFLICT_RETRIES = 8


@dataclass(frozen=True)
class Credited:
    """The outcome of crediting one run: the minion as written (None: it was credited before), and the level
    before and after."""

    minion: dict[str, Any]
    status: MinionStatus | None
    level_before: int


class MinionGone(Exception):
    """The run's minion does not exist (deleted after the run started)."""


class MinionController:
    """Minion I/O for the operator; one per operator process (kept in Kopf's memo)."""

    def __init__(self, kube: Kube, now: Callable[[], str]) -> None:
        self.kube, self._now = kube, now

    def spec(self, namespace: str, name: str) -> MinionSpec | None:
        """The minion's spec, or None when there is no such minion."""
        found = self.kube.read_minion(namespace, name)
        return MinionSpec.model_validate(found["spec"]) if found else None

    def credit(self, namespace: str, name: str, entry: LedgerEntry) -> Credited:
        """Credit ``entry`` to the minion once (by run UID), at the resourceVersion it read; on a conflict, read
        again and retry. Raises MinionGone, or ApiException for the caller to retry later."""
        for _ in range(CONFLICT_RETRIES):
            found = self.kube.read_minion(namespace, name)
            if found is None:
                raise MinionGone(f"Minion {name} does not exist")
            spec = MinionSpec.model_validate(found["spec"])
            old = MinionStatus.model_validate(found.get("status") or {})
            new = minions.credit(old, entry, spec.levels)
            if new is None:
                return Credited(found, None, old.level)
            new.conditions = _ready(new, self._now(), found["metadata"].get("generation"))
            try:
                written = self._replace_status(found, new)
            except ApiException as err:
                if err.status == 409:
                    continue
                raise
            return Credited(written, new, old.level)
        raise ApiException(status=409, reason=f"Minion {name} changed {CONFLICT_RETRIES} times while crediting")

    def observe(self, body: dict[str, Any]) -> MinionStatus | None:
        """The minion's status for its current spec (levels re-derived, observedGeneration); None when the
        status already says so. Written at the resourceVersion of ``body``: a conflict means a credit came
        first, and the next event brings the newer object."""
        spec = MinionSpec.model_validate(body["spec"])
        old = MinionStatus.model_validate(body.get("status") or {})
        generation = body["metadata"].get("generation")
        new = minions.relevel(old, spec.levels)
        new.observed_generation = generation
        new.conditions = _ready(new, self._now(), generation)
        if new == old:
            return None
        try:
            self._replace_status(body, new)
        except ApiException as err:
            if err.status != 409:
                raise
        return new

    def _replace_status(self, found: dict[str, Any], status: MinionStatus) -> dict[str, Any]:
        return self.kube.replace_minion_status(found, status.model_dump(by_alias=True, exclude_none=True,
                                                                        mode="json"))


def _ready(status: MinionStatus, now: str, generation: int | None) -> list[api.Condition]:
    at = f"level {status.level}, {status.xp} XP from {status.runs} runs"
    return set_condition(status.conditions, R.READY, "True", R.CREDITED if status.runs else R.NO_RUNS_YET, at,
                         now, generation)
