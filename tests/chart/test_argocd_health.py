"""The Argo CD health check (charts/lora-operator/argocd/health.lua) on statuses the operator writes.

Argo CD runs health checks in gopher-lua (Lua 5.1), so the script runs here in lupa's Lua 5.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from lora_contract.minion import LedgerEntry, MinionStatus
from lora_operator.minions import credit, relevel
from lora_operator.status import dump, parse, reconcile_status, set_condition
from tests.chart.conftest import CHART

ROOT = Path(__file__).resolve().parents[2]
HEALTH_LUA = CHART / "argocd" / "health.lua"
ARGOCD_KEY = "resource.customizations.health.lora.airepublic.io_LoraTrainingJob"
MINION_LUA = CHART / "argocd" / "minion-health.lua"
MINION_KEY = "resource.customizations.health.lora.airepublic.io_Minion"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def health(obj: dict[str, Any]) -> dict[str, str]:
    """What Argo CD would show for ``obj``: {"status": ..., "message": ...}."""
    lua = lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    return dict(lua.execute(HEALTH_LUA.read_text()))


def _ltj(status: dict[str, Any] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "lora.airepublic.io/v1alpha1", "kind": "LoraTrainingJob",
                           "metadata": {"name": "demo", "generation": 1}, "spec": {}}
    if status is not None:
        obj["status"] = status
    return obj


def _job(suspend: bool = False, condition: str | None = None, message: str = "") -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True", "message": message}] if condition else []
    return {"metadata": {"name": "demo-train"}, "spec": {"suspend": suspend}, "status": {"conditions": conditions}}


def _running_pod() -> dict[str, Any]:
    return {"metadata": {"name": "demo-train-x", "creationTimestamp": "2026-01-01T11:00:00Z"},
            "status": {"phase": "Running"}}


def _status(job: dict[str, Any] | None, pods: Sequence[dict[str, Any]] = (), before: dict[str, Any] | None = None,
            now: datetime = NOW) -> dict[str, Any]:
    """The status the operator's own reconciliation writes, from ``before``."""
    new, _ = reconcile_status(parse(before), job, list(pods), now=now, generation=1, stall_timeout=900)
    return dump(new)


def test_no_status_yet_is_progressing() -> None:
    assert health(_ltj(None))["status"] == "Progressing"
    assert health(_ltj({}))["status"] == "Progressing"


def test_pending_is_progressing_with_the_reason() -> None:
    result = health(_ltj(_status(None)))
    assert result == {"status": "Progressing", "message": "Pending: the training Job is being created"}


def test_running_is_progressing_with_step_and_progress() -> None:
    status = _status(_job(), [_running_pod()])
    status["trainer"].update(stepSummary="4/9 training", progress=41, lastProgressTime="2026-01-01T11:59:00Z")
    status = _status(_job(), [_running_pod()], before=status)
    assert health(_ltj(status)) == {"status": "Progressing", "message": "Training: 4/9 training (41%)"}


def test_stalled_run_is_degraded_until_it_progresses_again() -> None:
    status = _status(_job(), [_running_pod()])
    status["trainer"].update(stepSummary="4/9 training", progress=41, lastProgressTime="2026-01-01T11:00:00Z")
    stalled = _status(_job(), [_running_pod()], before=status)
    result = health(_ltj(stalled))
    assert result["status"] == "Degraded"
    assert result["message"] == "Stalled at 4/9 training (41%): no progress for 3600s (stallTimeoutSeconds=900)"
    stalled["trainer"]["lastProgressTime"] = "2026-01-01T12:05:00Z"
    recovered = _status(_job(), [_running_pod()], before=stalled, now=NOW + timedelta(minutes=6))
    assert health(_ltj(recovered))["status"] == "Progressing"


def test_suspended_is_suspended() -> None:
    assert health(_ltj(_status(_job(suspend=True)))) == {
        "status": "Suspended", "message": "the Job is suspended (spec.suspend)"}


def test_succeeded_is_healthy_and_says_so_when_quality_regressed() -> None:
    better = _status(_job(condition="Complete"), before={"trainer": {
        "trainItems": 120, "before": {"weightedOverall": 50.0}, "after": {"weightedOverall": 71.5}}})
    assert better["xp"] > 0
    assert health(_ltj(better)) == {"status": "Healthy", "message": f"Succeeded with {better['xp']} XP"}
    worse = _status(_job(condition="Complete"), before={"trainer": {
        "trainItems": 3, "before": {"weightedOverall": 62.0}, "after": {"weightedOverall": 58.3}}})
    assert health(_ltj(worse)) == {
        "status": "Healthy",
        "message": "Succeeded, but the adapter is worse than the base model: weighted overall quality 62.0 -> 58.3"}


def test_failed_is_degraded_with_the_reason() -> None:
    failed = _job(condition="Failed", message="Job has reached the specified backoff limit")
    result = health(_ltj(_status(failed)))
    assert result == {"status": "Degraded", "message": "Job has reached the specified backoff limit"}


def test_ignored_spec_change_is_degraded() -> None:
    status = parse(_status(_job(suspend=True)))
    message = "spec fields lora changed after the Job was created and are not applied to this run"
    status.conditions = set_condition(status.conditions, "SpecChangeIgnored", "True", "ImmutableAfterStart",
                                      message, "2026-01-01T12:00:00Z", 1)
    assert health(_ltj(dump(status))) == {"status": "Degraded", "message": message}


def test_unknown_phase_is_unknown() -> None:
    assert health(_ltj({"phase": "Exploded"})) == {"status": "Unknown", "message": "Unknown phase Exploded"}


@pytest.mark.parametrize(("lua", "key"), [(HEALTH_LUA, ARGOCD_KEY), (MINION_LUA, MINION_KEY)])
def test_docs_carry_the_script_verbatim(lua: Path, key: str) -> None:
    """docs/argocd.md's argocd-cm patches are the scripts indented under their Argo CD keys."""
    docs = (ROOT / "docs" / "argocd.md").read_text()
    script = "".join(f"    {line}" if line.strip() else line for line in lua.read_text().splitlines(True))
    snippet = f"```yaml\ndata:\n  {key}: |\n{script}```\n"
    assert snippet in docs, f"docs/argocd.md is stale; its argocd-cm snippet must read:\n{snippet}"
    assert yaml.safe_load(snippet.removeprefix("```yaml\n").removesuffix("```\n"))["data"][key] == lua.read_text()


def _minion_health(obj: dict[str, Any]) -> dict[str, str]:
    lua = lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    return dict(lua.execute(MINION_LUA.read_text()))


def test_a_minion_is_progressing_until_the_operator_read_its_spec_then_healthy_with_its_level() -> None:
    """On statuses the minion controller's own functions produce (a new minion, then one credit)."""
    minion = {"metadata": {"name": "ana", "generation": 2}, "spec": {}}
    assert _minion_health(minion)["status"] == "Progressing"
    fresh = relevel(MinionStatus(), [800, 2400]).model_copy(update={"observed_generation": 1})
    assert _minion_health({**minion, "status": fresh.model_dump(by_alias=True, exclude_none=True)})[
        "status"] == "Progressing"  # an older generation: the operator has not read the edit yet
    entry = LedgerEntry(run="r1", uid="u1", xp=900, finished="2026-01-01T12:00:00Z", quality_change=2.0,
                        adapter_uri="s3://bucket/ana/r1/adapter")
    credited = credit(fresh, entry, [800, 2400])
    assert credited is not None
    status = credited.model_copy(update={"observed_generation": 2}).model_dump(by_alias=True, exclude_none=True)
    assert _minion_health({**minion, "status": status}) == {
        "status": "Healthy",
        "message": "level 2, 900 XP (level 3 at 2400) from 1 runs; serves s3://bucket/ana/r1/adapter"}


@pytest.mark.parametrize("phase", ["Pending", "Running", "Suspended", "Succeeded", "Failed"])
def test_every_phase_has_a_message(phase: str) -> None:
    assert health(_ltj({"phase": phase}))["message"]


@pytest.mark.parametrize("phase, condition", [("Running", "Stalled"), ("Succeeded", "QualityRegressed"),
                                              ("Suspended", "SpecChangeIgnored")])
def test_a_condition_without_message_still_has_a_health(phase: str, condition: str) -> None:
    """A nil message must not break the script: Argo CD would show an error instead of a health."""
    result = health(_ltj({"phase": phase, "conditions": [{"type": condition, "status": "True"}]}))
    assert result["status"] in {"Degraded", "Healthy"} and result["message"]
