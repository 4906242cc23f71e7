"""Fault 5: the operator's status writes answered 409 Conflict and 429 Too Many Requests mid-run.

The apiserver answers them: a validating admission webhook on ``loratrainingjobs/status`` (this namespace
only) refuses the next writes with those codes, which the apiserver passes back to the writer as they are,
the way a conflicting writer or API Priority and Fairness would answer."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StatusRecorder, assert_succeeded_with_results, make_tls, pvc, run_until, tiny_run
from tests.faults.conftest import (
    Row,
    assert_once,
    children,
    event_counts,
    held_at_first_checkpoint,
    outcome,
    terminal,
)
from tests.http_fakes import JsonHandler, serve_https

pytestmark = pytest.mark.integration
REASONS = {409: "Conflict", 429: "TooManyRequests"}
WEBHOOK = "lora-faults-status-refuser"


class StatusRefuser(JsonHandler):
    """Answers AdmissionReviews: the next writes get ``codes`` in turn, then every write is allowed.
    A subclass per test keeps these class attributes its own."""

    codes: list[int] = []
    answered: list[int] = []

    def do_POST(self) -> None:
        review = self.read_json()
        response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": True}
        if self.codes:
            code = self.codes.pop(0)
            self.answered.append(code)
            response.update(allowed=False, status={"code": code, "reason": REASONS[code],
                                                   "message": f"refused by the fault suite ({code})"})
        self.send_json(200, {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})


@pytest.fixture
def refuser(kubectl, namespace, tmp_path: Path) -> Iterator[type[StatusRefuser]]:
    """The webhook, registered for this namespace's status writes (failurePolicy Ignore: never blocks others)."""
    tls = make_tls(tmp_path / "webhook-tls", "127.0.0.1")
    handler = type("Refuser", (StatusRefuser,), {"codes": [], "answered": []})
    with serve_https(handler, tls) as url:
        kubectl.apply({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK},
            "webhooks": [{
                "name": "status-refuser.faults.lora.airepublic.io",
                "clientConfig": {"url": url, "caBundle": base64.b64encode((tls / "ca.crt").read_bytes()).decode()},
                "rules": [{"apiGroups": ["lora.airepublic.io"], "apiVersions": ["*"], "operations": ["UPDATE"],
                           "resources": ["loratrainingjobs/status"]}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": "Ignore",
                "timeoutSeconds": 5,
            }],
        }, namespace)
        try:
            yield handler
        finally:
            kubectl("delete", "validatingwebhookconfiguration", WEBHOOK)


def test_status_writes_answered_409_and_429(kubectl, operator, namespace, tiny_model_pvc, test_node, refuser,
                                            fault_log):
    """The refusals land mid-run: they are injected with the trainer held at its first checkpoint, which then
    trains on in short slices (its reports are what the operator writes) until the webhook has answered all six;
    a trainer running free may finish before the operator, waiting 2 s after each refusal, has written six times."""
    name = "refused"
    kubectl.apply(pvc("artifacts"), namespace)
    recorder = StatusRecorder(kubectl, namespace, name)
    recorder.start()
    kubectl.apply(tiny_run(name, tiny_model_pvc), namespace)
    with held_at_first_checkpoint(kubectl, namespace, name) as (_, pgid):
        refuser.codes.extend([409, 429] * 3)  # the next six status writes, reports and the operator's own alike
        # About two steps a second: the webhook's state costs nothing to check, so without the pause it ran free.
        run_until(pgid, lambda: not refuser.codes, slice_s=0.05, pause_s=1.0)
    lifted = time.monotonic()  # the end of the fault: the last refusal answered, the trainer let go
    status, done = terminal(kubectl, namespace, name)
    recorder.join(timeout=60)
    assert_succeeded_with_results(status, namespace, name)
    assert {409, 429} <= set(refuser.answered), refuser.answered
    log = "".join(p.read_text() for p in operator.log_dir.glob("operator-*.log"))
    assert "refused by the fault suite" in log  # the refusals reached the operator, which wrote again
    progresses = [s["progress"] for s in recorder.seen if s["progress"] is not None]
    assert progresses == sorted(progresses), recorder.seen
    assert children(kubectl, namespace, name) == (1, 1)
    events = event_counts(kubectl, namespace, name, "Awarded")
    assert_once(events, "JobCreated", "Running", "Succeeded", "Awarded")
    refused = ", ".join(f"{n} x {code}" for code in REASONS if (n := refuser.answered.count(code)))
    fault_log.record(Row(5, "status writes answered 409 and 429 (an admission webhook refuses the next six)",
                         "written again after a pause; nothing regresses; Succeeded with metrics and XP",
                         f"refused: {refused}; " + outcome(kubectl, namespace, name, status, events),
                         round(done - lifted, 1)))
