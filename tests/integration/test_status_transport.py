"""The progress endpoint against the real control plane: real pod-bound tokens, real TokenReviews.

The reporting pods here are parked on a Node no kubelet runs: a token needs a pod to exist, not to run.
Tokens come from the TokenRequest API exactly as the kubelet gets them.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lora_contract import progress
from tests.conftest import PARKING_NODE, parked_pod, wait_for
from tests.integration.test_operator_lifecycle import _ltj

pytestmark = pytest.mark.integration


class Endpoint:
    def __init__(self, port: int, tls: Path, namespace: str) -> None:
        self.port, self.namespace = port, namespace
        self.context = ssl.create_default_context(cafile=str(tls / "ca.crt"))

    def post(self, run: str, body: bytes | dict, token: str | None) -> tuple[int, str]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        url = f"https://127.0.0.1:{self.port}/v1/namespaces/{self.namespace}/loratrainingjobs/{run}/report"
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
