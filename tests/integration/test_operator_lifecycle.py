"""The operator against a real control plane: Job creation, idempotency, suspend, spec edits, deletion."""

from __future__ import annotations

import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def _ltj(name: str, **spec) -> dict:
    body = {
        "model": {"hubId": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "datasets": [{"inline": [{"instruction": "Say hi", "output": "Hi there, friend!"}]}],
        "resources": {"gpu": 1, "cpu": "1", "memory": "1Gi"},
    }
    body.update(spec)
    return {"apiVersion": "lora.airepublic.io/v1alpha1", "kind": "LoraTrainingJob",
            "metadata": {"name": name}, "spec": body}


def _jobs(kubectl, namespace: str) -> list[dict]:
    import yaml

    return yaml.safe_load(kubectl("get", "jobs", "-n", namespace, "-o", "yaml"))["items"]



def test_suspended_run_gets_its_job_and_children(kubectl, operator, namespace) -> None:
    kubectl.apply(_ltj("alpha", suspend=True), namespace)
    status = wait_for("phase Suspended", lambda: (s := kubectl.status(namespace, "alpha")).get("phase") == "Suspended"
                      and s, timeout=60)
    assert status["jobName"] == "alpha-train"
    assert status["trainer"]["stepSummary"] == "0/9 before-metrics" and len(status["trainer"]["steps"]) == 10
    assert {c["type"] for c in status["conditions"]} >= {"Ready", "Running", "Succeeded", "Failed", "Stalled"}
    owner = kubectl.get("ltj", "alpha", namespace)["metadata"]["uid"]
    job = kubectl.get("job", "alpha-train", namespace)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["ownerReferences"][0]["uid"] == owner
    for kind, name in [("serviceaccount", "alpha-trainer"), ("configmap", "alpha-spec")]:
        obj = kubectl.get(kind, name, namespace)
        assert obj and obj["metadata"]["ownerReferences"][0]["uid"] == owner, kind
    kubectl.events(namespace, "alpha", "JobCreated")


def test_operator_restart_creates_no_second_job(kubectl, operator, namespace) -> None:
    kubectl.apply(_ltj("beta", suspend=True), namespace)
    wait_for("the Job", lambda: _jobs(kubectl, namespace), timeout=60)
    uid = _jobs(kubectl, namespace)[0]["metadata"]["uid"]
    operator.stop()
    operator.start()
    wait_for("the restarted operator to resume beta", lambda: "beta" in operator.log.read_text(), timeout=60)
    jobs = _jobs(kubectl, namespace)
    assert [j["metadata"]["uid"] for j in jobs] == [uid]


def test_spec_edits_are_reported_not_applied_and_suspend_is(kubectl, operator, namespace) -> None:
    kubectl.apply(_ltj("gamma", suspend=True), namespace)
    wait_for("Suspended", lambda: kubectl.status(namespace, "gamma").get("phase") == "Suspended", timeout=60)
    kubectl("patch", "ltj", "gamma", "-n", namespace, "--type=merge", "-p", '{"spec": {"lora": {"rank": 16}}}')

    def ignored():
        conds = {c["type"]: c for c in kubectl.status(namespace, "gamma").get("conditions", [])}
        return conds.get("SpecChangeIgnored", {}).get("status") == "True" and conds["SpecChangeIgnored"]

    cond = wait_for("SpecChangeIgnored", ignored, timeout=60)
    assert "lora" in cond["message"]
    spec_cm = kubectl.get("configmap", "gamma-spec", namespace)
    assert "rank: 8" in spec_cm["data"]["spec.yaml"]  # the run keeps the spec it started with
    kubectl("patch", "ltj", "gamma", "-n", namespace, "--type=merge", "-p", '{"spec": {"lora": {"rank": 8}}}')
    wait_for("SpecChangeIgnored cleared", lambda: next(
        c for c in kubectl.status(namespace, "gamma")["conditions"] if c["type"] == "SpecChangeIgnored"
    )["status"] == "False", timeout=60)
    kubectl("patch", "ltj", "gamma", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    wait_for("the Job to be resumed",
             lambda: kubectl.get("job", "gamma-train", namespace)["spec"]["suspend"] is False, timeout=60)


def test_deleting_the_resource_removes_job_and_pods(kubectl, operator, namespace) -> None:
    kubectl.apply(_ltj("delta", suspend=True), namespace)
    wait_for("the Job", lambda: _jobs(kubectl, namespace), timeout=60)
    kubectl("delete", "ltj", "delta", "-n", namespace, "--timeout=60s")
    wait_for("garbage collection of the Job", lambda: not _jobs(kubectl, namespace), timeout=90)
    wait_for("garbage collection of the ConfigMap",
             lambda: kubectl.get("configmap", "delta-spec", namespace) is None, timeout=90)


def test_unschedulable_run_is_pending_with_the_scheduler_message(kubectl, operator, namespace, test_node) -> None:
    kubectl.apply(_ltj("huge", resources={"gpu": 16}), namespace)

    def pending():
        s = kubectl.status(namespace, "huge")
        ok = s.get("phase") == "Pending" and "nvidia.com/gpu" in (s.get("message") or "")
        return s if ok else [False, s.get("phase"), s.get("message")]

    status = wait_for("Pending with the scheduler's reason", pending, timeout=90)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "Unschedulable"


def test_a_spec_whose_job_the_apiserver_refuses_fails_as_invalid_spec(kubectl, operator, namespace) -> None:
    """Node selector keys are not checked by the CRD; the Job built from one is, and its 422 is final."""
    kubectl.apply(_ltj("epsilon", resources={"gpu": 1, "nodeSelector": {"not a valid/label/key": "x"}}), namespace)

    def failed():
        s = kubectl.status(namespace, "epsilon")
        return s if s.get("phase") == "Failed" else [False, s.get("phase"), s.get("message")]

    status = wait_for("Failed", failed, timeout=60)
    assert status["message"].startswith("the Job built from this spec is invalid: ")
    assert "nodeSelector" in status["message"], status["message"]
    cond = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert cond["status"] == "True" and cond["reason"] == "InvalidSpec"
    assert "Warning" in kubectl.events(namespace, "epsilon", "InvalidSpec")
    assert not _jobs(kubectl, namespace)
    # Editing a failed run changes nothing and does not loop on errors.
    kubectl("patch", "ltj", "epsilon", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": true}}')
    assert kubectl.status(namespace, "epsilon")["phase"] == "Failed"


def test_a_job_deleted_while_the_operator_is_away_ends_the_run_and_is_not_recreated(
    kubectl, operator, namespace
) -> None:
    """E.g. removed by ttlSecondsAfterFinished during an operator outage: resuming must not train again."""
    kubectl.apply(_ltj("zeta", suspend=True), namespace)
    wait_for("jobName", lambda: kubectl.status(namespace, "zeta").get("jobName"), timeout=60)
    operator.stop()
    kubectl("delete", "job", "zeta-train", "-n", namespace)
    operator.start()

    def failed():
        s = kubectl.status(namespace, "zeta")
        return s if s.get("phase") == "Failed" else [False, s.get("phase"), s.get("message")]

    status = wait_for("Failed", failed, timeout=60)
    assert "Job zeta-train was deleted before it finished" in status["message"]
    assert not _jobs(kubectl, namespace)


def test_kueue_owns_the_suspension_of_a_queued_run(kubectl, operator, namespace) -> None:
    kubectl.apply(_ltj("eta", queueName="team-a"), namespace)
    status = wait_for("Suspended (queued)", lambda: (s := kubectl.status(namespace, "eta")).get("phase")
                      == "Suspended" and s, timeout=60)
    assert "Kueue" in status["message"]
    job = kubectl.get("job", "eta-train", namespace)
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    kubectl("patch", "ltj", "eta", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": true}}')
    kubectl("patch", "ltj", "eta", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    wait_for("the SuspendIgnored event", lambda: "SuspendIgnored" in kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=eta"), timeout=60)
    assert kubectl.get("job", "eta-train", namespace)["spec"]["suspend"] is True  # not admitted behind Kueue's back
