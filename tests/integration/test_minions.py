"""Minions on the real control plane: runs that wait for their minion, inherit from it, and add up once each,
across an operator killed between a run's end and its credit (docs/minions.md).

The runs are real tiny runs on the process node (the trainer, the Job, the progress reports); only the GPU is
absent, as in test_training_runs."""

from __future__ import annotations

import time

import pytest
import yaml

from tests.conftest import TINY_LORA, pvc, tiny_run, wait_for

pytestmark = pytest.mark.integration

SHORT = {**TINY_LORA, "maxSteps": 30, "evalSteps": 15, "saveSteps": 15}
# The operator tries a credit every 5 s (LORA_CREDIT_INTERVAL_SECONDS): long enough to see a second credit.
SETTLE_S = 12


def _minion(name: str, models: str, **spec) -> dict:
    return {"apiVersion": "lora.airepublic.io/v1alpha1", "kind": "Minion", "metadata": {"name": name},
            "spec": {"displayName": name.title(), "model": {"path": f"{models}/tiny"}, **spec}}


def _for_minion(name: str, minion: str, models: str) -> dict:
    run = tiny_run(name, models, lora=SHORT, minion=minion)
    del run["spec"]["model"]  # inherited
    return run


def _credited(kubectl, namespace: str, name: str) -> dict:
    return wait_for(f"run {name} credited", lambda: (s := kubectl.status(namespace, name)).get("credited") and s,
                    timeout=600, interval=1)


def _minion_status(kubectl, namespace: str, name: str) -> dict:
    return (kubectl.get("minion", name, namespace) or {}).get("status") or {}


def test_runs_wait_for_their_minion_inherit_from_it_and_add_up_once_each(
        kubectl, operator, namespace, tiny_model_pvc, test_node):
    kubectl.apply(pvc("artifacts"), namespace)
    kubectl.apply(_for_minion("mn-a", "ana", tiny_model_pvc), namespace)
    waiting = wait_for("run mn-a waiting for its minion", lambda: (s := kubectl.status(namespace, "mn-a")).get(
        "message", "").startswith("waiting for Minion ana") and s, timeout=60)
    assert waiting["phase"] == "Pending"
    kubectl.events(namespace, "mn-a", "MinionNotFound")
    assert kubectl.get("job", "mn-a-train", namespace) is None
    # The minion sets the rank the runs leave at its default, and a level table the first credit passes.
    kubectl.apply(_minion("ana", tiny_model_pvc, lora={"rank": 4}, levels=[1, 10**6]), namespace)
    kubectl.apply(_for_minion("mn-b", "ana", tiny_model_pvc), namespace)  # the two finish about together
    runs = {name: _credited(kubectl, namespace, name) for name in ("mn-a", "mn-b")}
    for name, status in runs.items():
        assert status["phase"] == "Succeeded" and status["xp"] > 0, (name, status.get("message"))
        assert status["credited"]["minion"] == "ana" and status["credited"]["xp"] == status["xp"]
    frozen = yaml.safe_load(yaml.safe_load(kubectl("get", "configmap", "mn-a-spec", "-n", namespace, "-o", "yaml"))
                            ["data"]["spec.yaml"])
    assert frozen["model"]["path"] == f"{tiny_model_pvc}/tiny" and frozen["lora"]["rank"] == 4  # inherited
    assert frozen["lora"]["maxSteps"] == SHORT["maxSteps"]  # the run's own
    time.sleep(SETTLE_S)
    minion = _minion_status(kubectl, namespace, "ana")
    total = sum(s["xp"] for s in runs.values())
    assert (minion["xp"], minion["runs"], minion["level"]) == (total, 2, 2), minion
    uids = {kubectl.get("ltj", name, namespace)["metadata"]["uid"] for name in runs}
    assert {e["uid"] for e in minion["ledger"]} == uids
    newest = max(minion["ledger"], key=lambda e: e["finished"])
    assert minion["adapter"]["run"] in runs and minion["adapter"]["uri"].startswith("pvc://artifacts/"), minion
    assert newest["xp"] > 0
    kubectl.events(namespace, "ana", "LevelUp")
    table = kubectl("get", "minions", "-n", namespace)
    print(table)
    header, row = table.splitlines()[0].split(), table.splitlines()[1].split()
    assert header == ["NAME", "LEVEL", "XP", "RUNS", "ADAPTER", "AGE"]
    assert row[:5] == ["ana", "2", str(total), "2", minion["adapter"]["uri"]]
    assert kubectl("get", "ltj", "mn-a", "-n", namespace, "-o", "wide").splitlines()[0].split()[-1] == "MINION"
    # A run deleted after its credit keeps the XP it earned.
    kubectl("delete", "ltj", "mn-a", "-n", namespace)
    time.sleep(SETTLE_S)
    assert _minion_status(kubectl, namespace, "ana")["xp"] == total


def test_a_run_that_ended_while_its_credit_could_not_be_made_is_credited_once_after_an_operator_restart(
        kubectl, operator, namespace, tiny_model_pvc, test_node):
    """The minion disappears while its run trains, so the run's credit waits; the operator is killed (SIGKILL)
    with the run Succeeded and not credited; the minion comes back and a new operator credits it, once."""
    kubectl.apply(pvc("artifacts"), namespace)
    kubectl.apply(_minion("bo", tiny_model_pvc), namespace)
    kubectl.apply(_for_minion("mn-c", "bo", tiny_model_pvc), namespace)
    wait_for("run mn-c training", lambda: kubectl.get("job", "mn-c-train", namespace), timeout=120)
    kubectl("delete", "minion", "bo", "-n", namespace)
    status = wait_for("run mn-c to end", lambda: (s := kubectl.status(namespace, "mn-c")).get("phase") in (
        "Succeeded", "Failed") and s, timeout=600, interval=1)
    assert status["phase"] == "Succeeded", status.get("message")
    time.sleep(SETTLE_S)
    assert not kubectl.status(namespace, "mn-c").get("credited")
    operator.kill()
    kubectl.apply(_minion("bo", tiny_model_pvc), namespace)
    operator.start()
    credited = _credited(kubectl, namespace, "mn-c")
    time.sleep(SETTLE_S)
    minion = _minion_status(kubectl, namespace, "bo")
    assert (minion["runs"], minion["xp"]) == (1, credited["xp"]), minion
    assert [e["run"] for e in minion["ledger"]] == ["mn-c"]
    # A failed run is listed too, with 0 XP and why.
    bad = _for_minion("mn-d", "bo", tiny_model_pvc)
    bad["spec"]["data"] = {"minTextLength": 5000}  # no usable training items: fails in step 1, exit code 2
    kubectl.apply(bad, namespace)
    failed = _credited(kubectl, namespace, "mn-d")
    assert failed["phase"] == "Failed" and failed["credited"]["xp"] == 0
    entry = next(e for e in _minion_status(kubectl, namespace, "bo")["ledger"] if e["run"] == "mn-d")
    assert entry["xp"] == 0 and entry["reason"].startswith("Failed: "), entry
