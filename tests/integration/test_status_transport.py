"""The progress endpoint against the real control plane: real pod-bound tokens, real TokenReviews.

The reporting pods of the first test are parked on a Node no kubelet runs: a token needs a pod to exist, not to
run. Tokens come from the TokenRequest API exactly as the kubelet gets them. The two-pod run's pods are the Job
controller's, running on the process node, and report with the tokens their volumes hold.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from lora_contract import progress
from lora_contract.wire import EXIT_INTERRUPTED, EXIT_INVALID_INPUT, GATHER_PORT, RENDEZVOUS_PORT
from lora_operator.builders import COMPLETION_INDEX
from tests.conftest import PARKING_NODE, parked_pod, pvc, wait_for
from tests.integration.test_operator_lifecycle import _ltj

pytestmark = pytest.mark.integration


class Endpoint:
    def __init__(self, port: int, tls: Path, namespace: str) -> None:
        self.port, self.namespace = port, namespace
        self.context = ssl.create_default_context(cafile=str(tls / "ca.crt"))

    def url(self, run: str) -> str:
        return f"https://127.0.0.1:{self.port}/v1/namespaces/{self.namespace}/loratrainingjobs/{run}/report"

    def post(self, run: str, body: bytes | dict, token: str | None) -> tuple[int, str]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        url = self.url(run)
        request = urllib.request.Request(url, data=data, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()


def _report(sequence: int, training_step: int, **extra) -> dict:
    trainer = progress.reduce(progress.initial_status(), progress.TrainEvent(step=training_step, totalSteps=50,
                                                                             loss=1.5))
    body = {"sequence": sequence, "trainer": progress.dump_status(trainer)}
    body["trainer"].update(extra.pop("trainer_extra", {}))
    body.update(extra)
    return body


def _token(kubectl, namespace: str, account: str, pod: str | None = None, audience: str = "lora-operator") -> str:
    bound = ["--bound-object-kind", "Pod", "--bound-object-name", pod] if pod else []
    return kubectl("create", "token", account, "-n", namespace, "--audience", audience, "--duration", "10m",
                   *bound).strip()


def test_only_a_pod_of_the_run_may_report_and_only_a_valid_report_is_written(
    kubectl, operator, namespace, progress_tls
) -> None:
    for name in ("alpha", "beta"):
        kubectl.apply(_ltj(name, suspend=True), namespace)
    for name in ("alpha", "beta"):
        wait_for(f"{name} Suspended", lambda n=name: kubectl.status(namespace, n).get("phase") == "Suspended")
    kubectl.apply(PARKING_NODE, "")
    kubectl.apply(parked_pod("alpha", "alpha-pod"), namespace)
    endpoint = Endpoint(operator.port, progress_tls, namespace)
    token = _token(kubectl, namespace, "alpha-trainer", "alpha-pod")

    status, body = endpoint.post("alpha", _report(1, 7), token)
    assert status == 202, body
    trainer = wait_for("the report in the status", lambda: (t := kubectl.status(namespace, "alpha").get("trainer"))
                       and t.get("trainingStep") == 7 and t, timeout=30)
    assert trainer["loss"] == 1.5 and kubectl.status(namespace, "alpha")["phase"] == "Suspended"

    # Who: no token, a token for another audience, one bound to no pod, one of a deleted pod -> 401.
    assert endpoint.post("alpha", _report(2, 8), None)[0] == 401
    assert endpoint.post("alpha", _report(2, 8), "not-a-token")[0] == 401
    assert endpoint.post("alpha", _report(2, 8), _token(kubectl, namespace, "alpha-trainer", "alpha-pod",
                                                        audience="https://kubernetes.default.svc"))[0] == 401
    assert endpoint.post("alpha", _report(2, 8), _token(kubectl, namespace, "alpha-trainer"))[0] == 401
    # Run alpha's pod reporting for run beta -> 403.
    status, body = endpoint.post("beta", _report(2, 8), token)
    assert status == 403 and "may not report for run" in body, body

    # What: fields a trainer never sets, unknown fields, non-finite numbers, oversized strings -> 400.
    for bad in (_report(3, 9, phase="Succeeded"), _report(3, 9, trainer_extra={"xp": 99999}),
                _report(3, 9, trainer_extra={"phase": "Succeeded"}), _report(3, 9, trainer_extra={"loss": 1e999}),
                _report(3, 9, trainer_extra={"message": "x" * 5000}), {"trainer": {}}):
        status, body = endpoint.post("alpha", bad, token)
        assert status == 400 and "invalid report" in body, (bad, body)
    assert endpoint.post("alpha", b"{not json", token)[0] == 400
    status, body = endpoint.post("alpha", b"{" + b" " * (70 * 1024) + b"}", token)
    assert status == 413, body
    # An older report than one already accepted is acknowledged and dropped.
    assert endpoint.post("alpha", _report(1, 3), token)[0] == 200

    time.sleep(3)  # the writer's per-run interval here is 1 s: anything accepted would be visible by now
    after = kubectl.status(namespace, "alpha")
    assert after["trainer"]["trainingStep"] == 7 and "xp" not in after and after["phase"] == "Suspended"
    assert "trainingStep" not in (kubectl.status(namespace, "beta").get("trainer") or {})
    # No kubelet runs the parking node, so nothing would finish the pod's graceful deletion: the namespace
    # would stay Terminating, its runs with it, for every later test's operator to trip over.
    kubectl("delete", "pod", "alpha-pod", "-n", namespace, "--force", "--grace-period=0")


def test_the_trainers_service_account_has_no_rbac_at_all(kubectl, operator, namespace) -> None:
    kubectl.apply(_ltj("gamma", suspend=True), namespace)
    wait_for("gamma Suspended", lambda: kubectl.status(namespace, "gamma").get("phase") == "Suspended")
    rules = kubectl("auth", "can-i", "--list", "-n", namespace,
                    "--as", f"system:serviceaccount:{namespace}:gamma-trainer").splitlines()[1:]
    resources = {line.split()[0] for line in rules if line.split() and not line.split()[0].startswith("[")}
    # What every authenticated identity may do (discovery, asking what it may do), and nothing else.
    assert resources <= {"selfsubjectreviews.authentication.k8s.io", "selfsubjectaccessreviews.authorization.k8s.io",
                         "selfsubjectrulesreviews.authorization.k8s.io"}, rules
    bindings = json.loads(kubectl("get", "rolebindings,clusterrolebindings", "-A", "-o", "json"))["items"]
    assert not [b["metadata"]["name"] for b in bindings
                if any(s.get("name") == "gamma-trainer" for s in b.get("subjects") or [])]


def _group_pods(kubectl, namespace: str, job: str) -> list[dict]:
    return yaml.safe_load(kubectl("get", "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={job}",
                                  "-o", "yaml"))["items"]


def _hold_pods(kubectl, namespace: str, job: str, count: int) -> dict[str, tuple[dict, int]]:
    """Completion index -> (pod, process group) for each of the Job's ``count`` pods, each stopped (SIGSTOP) as
    soon as the process node reports it running, as ``tests.conftest.frozen_trainer`` holds a one-pod run: no DNS
    names the rank-0 pod here, so a trainer let on would wait for its rendezvous, or fail it (the operator would
    restart the group). They stay stopped: their deletion ends them (the process node's SIGKILL after the grace
    period)."""
    held: dict[str, tuple[dict, int]] = {}

    def hold_the_running() -> bool | list:
        for pod in _group_pods(kubectl, namespace, job):
            index = (pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX)
            container_id = ((pod["status"].get("containerStatuses") or [{}])[0]).get("containerID")
            if index not in held and pod["status"].get("phase") == "Running" and container_id:
                pgid = int(container_id.removeprefix("lora-test://"))  # the process node's container ID
                os.killpg(pgid, signal.SIGSTOP)
                held[index] = (pod, pgid)
        return len(held) == count or [False, sorted(held)]

    wait_for(f"the {count} pods of {job} running", hold_the_running, timeout=180)
    return held


def _process_env(pid: int) -> dict[str, str]:
    """The environment a pod's process was started with, as the process node resolved it."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)


def test_in_a_run_over_two_pods_only_the_rank_0_pod_may_report(
    kubectl, operator, namespace, progress_tls, test_node
) -> None:
    """resources.nodes: 2 is an Indexed Job of two pods behind a headless Service; both run on the process node
    and hold a valid token of the run's ServiceAccount, but only pod index 0 (global rank 0) may report: its
    report reaches the status, pod 1's is refused with 403 naming the pod, and nothing of it is written."""
    run, job = "duo", "duo-train"
    kubectl.apply(pvc("artifacts"), namespace)
    # A short grace period: the held pods end by SIGKILL once it is over, and their namespace goes no sooner.
    kubectl.apply(_ltj(run, resources={"gpu": 1, "cpuFallback": True, "cpu": "1", "memory": "1Gi", "nodes": 2},
                       output={"claimName": "artifacts"}, runtime={"terminationGracePeriodSeconds": 2}), namespace)
    endpoint = Endpoint(operator.port, progress_tls, namespace)
    owner = kubectl.get("ltj", run, namespace)["metadata"]["uid"]
    held = _hold_pods(kubectl, namespace, job, count=2)
    assert sorted(held) == ["0", "1"]
    # What the operator made: an Indexed Job of two pods at once, and the Service naming them.
    spec = kubectl.get("job", job, namespace)["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["podFailurePolicy"]["rules"] == [  # as the apiserver stores them (a condition's status defaulted)
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                              "values": [EXIT_INVALID_INPUT]}},
        {"action": "Ignore", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                             "values": [EXIT_INTERRUPTED]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        # A group's worker that died outright fails the Job: the operator restarts the whole group.
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "NotIn", "values": [0]}}]
    assert spec["template"]["spec"]["subdomain"] == job
    env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert {k: env[k].get("value") for k in ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_MASTER_ADDR",
                                              "PET_MASTER_PORT")} == {
        "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_MASTER_ADDR": f"{job}-0.{job}.{namespace}.svc",
        "PET_MASTER_PORT": str(RENDEZVOUS_PORT)}
    assert env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        f"metadata.annotations['{COMPLETION_INDEX}']"
    service = kubectl.get("service", job, namespace)
    assert service["metadata"]["ownerReferences"][0]["uid"] == owner
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job}
    assert [p["port"] for p in service["spec"]["ports"]] == [RENDEZVOUS_PORT, GATHER_PORT]

    tokens, names = {}, {}
    for index, (pod, pgid) in held.items():
        names[index] = pod["metadata"]["name"]
        assert pod["spec"]["nodeName"] == test_node.name
        assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == (f"{job}-{index}", job)
        # The pod's own token: the file its trainer was told to send, which the process node wrote into the
        # pod's projected volume (a TokenRequest bound to this pod, audience lora-operator).
        pod_env = _process_env(pgid)
        assert pod_env["PET_NODE_RANK"] == index  # the fieldRef, resolved as a kubelet does
        assert pod_env["LORA_REPORT_URL"] == endpoint.url(run)
        token_file = Path(pod_env["LORA_REPORT_TOKEN"])
        assert token_file.is_relative_to(test_node.pod_dir(namespace, names[index]))
        tokens[index] = token_file.read_text().strip()
    assert tokens["0"] != tokens["1"]

    status, body = endpoint.post(run, _report(1, 7), tokens["0"])
    assert status == 202, body
    trainer = wait_for("rank 0's report in the status", lambda: (
        t := kubectl.status(namespace, run).get("trainer")) and t.get("trainingStep") == 7 and t, timeout=30)
    assert trainer["loss"] == 1.5

    status, body = endpoint.post(run, _report(1, 13, trainer_extra={"loss": 0.25}), tokens["1"])
    assert status == 403, body
    assert json.loads(body)["message"] == f"pod {namespace}/{names['1']} may not report for run {namespace}/{run}"

    time.sleep(3)  # the writer's per-run interval here is 1 s: anything accepted would be visible by now
    after = kubectl.status(namespace, run)
    assert after["phase"] == "Running", after
    assert (after["trainer"]["trainingStep"], after["trainer"]["loss"]) == (7, 1.5), after["trainer"]
    # Neither trainer failed or was replaced while held.
    pods = _group_pods(kubectl, namespace, job)
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(names.values())
    assert all(p["status"]["phase"] == "Running" for p in pods)
    # The run goes before its namespace: its held pods end by SIGKILL (exit 137), which fails a group's Job by
    # its pod-failure policy, and the operator would restart the group into the namespace being deleted.
    kubectl("delete", "ltj", run, "-n", namespace, "--timeout=60s")
