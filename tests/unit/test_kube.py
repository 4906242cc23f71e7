"""How ``Kube.create`` classifies the apiserver's refusals (its other calls are exercised against a real
apiserver by the integration tests)."""

from __future__ import annotations

import json

import kopf
import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from lora_operator.kube import ChildRejected, Kube, NamespaceTerminating

JOB = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "run-train"}}


def _refused(monkeypatch: pytest.MonkeyPatch, status: int, body: dict) -> None:
    error = ApiException(status=status, reason="refused")
    error.body = json.dumps(body)

    def create_from_dict(*_args: object, **_kwargs: object) -> None:
        raise kubernetes.utils.FailToCreateError([error])

    monkeypatch.setattr(kubernetes.utils, "create_from_dict", create_from_dict)


def _create() -> None:
    Kube(kubernetes.client.ApiClient()).create(JOB, "team", "uid-1")


def test_a_terminating_namespace_is_told_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    # The Status body a v1.34 apiserver returns for a create in a namespace being deleted.
    _refused(monkeypatch, 403, {
        "kind": "Status", "code": 403, "reason": "Forbidden",
        "message": 'jobs.batch "run-train" is forbidden: unable to create new content in namespace team because it '
                   "is being terminated",
        "details": {"name": "run-train", "group": "batch", "kind": "jobs", "causes": [
            {"reason": "NamespaceTerminating", "message": "namespace team is being terminated",
             "field": "metadata.namespace"}]}})
    with pytest.raises(NamespaceTerminating, match="namespace team is being deleted"):
        _create()


def test_other_refusals_keep_their_meaning(monkeypatch: pytest.MonkeyPatch) -> None:
    _refused(monkeypatch, 403, {"kind": "Status", "code": 403, "reason": "Forbidden",
                                "message": 'jobs.batch is forbidden: User "x" cannot create resource "jobs"'})
    with pytest.raises(kopf.TemporaryError) as forbidden:
        _create()
    assert not isinstance(forbidden.value, NamespaceTerminating)
    _refused(monkeypatch, 422, {"kind": "Status", "code": 422, "message": "spec.template: Invalid value"})
    with pytest.raises(ChildRejected, match=r"spec\.template: Invalid value"):
        _create()
