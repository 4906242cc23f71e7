"""The watch-fed caches ``sync`` reads, and what it does where a watch trails the API (no cluster)."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from lora_operator import cache
from lora_operator.builders import OperatorConfig
from lora_operator.run_controller import RunController


def _run(rv: int, uid: str = "u1", phase: str | None = "Suspended", deleted: bool = False,
         created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "ns", "name": "demo", "uid": uid, "resourceVersion": str(rv),
                            "generation": 1, "creationTimestamp": created, "managedFields": [{"manager": "x"}]}
    if deleted:
        meta["deletionTimestamp"] = "2026-01-01T00:00:09Z"
    return {"apiVersion": "lora.airepublic.io/v1alpha1", "kind": "LoraTrainingJob", "metadata": meta,
            "spec": {"suspend": True}, "status": {"phase": phase, "jobName": "demo-train"} if phase else {}}


def _job(suspend: bool = True) -> dict[str, Any]:
    return {"metadata": {"name": "demo-train", "namespace": "ns"}, "spec": {"suspend": suspend}, "status": {}}


def test_slim_drops_managed_fields_only() -> None:
    slim = cache.slim(_run(5))
    assert "managedFields" not in slim["metadata"] and slim["metadata"]["uid"] == "u1"
    assert slim["spec"] == {"suspend": True}


def test_pick_prefers_the_live_object_over_a_deleted_namesake() -> None:
    old = _run(3, uid="old", deleted=True, created="2026-01-01T00:00:00Z")
    new = _run(7, uid="new", created="2026-01-01T00:00:05Z")
    assert cache.pick([old, new])["metadata"]["uid"] == "new"
    assert cache.pick([old])["metadata"]["uid"] == "old"
    assert cache.pick(None) is None and cache.pick([]) is None


def test_a_write_newer_than_the_watch_wins_until_the_watch_catches_up() -> None:
    written = cache.WrittenRuns()
    written.remember(_run(10, phase="Running"))
    assert written.newest(_run(9))["status"]["phase"] == "Running"
    written.remember(_run(8, phase="Pending"))  # an older response arriving late changes nothing
    assert written.newest(_run(9))["metadata"]["resourceVersion"] == "10"
    assert written.newest(_run(11, phase="Failed"))["status"]["phase"] == "Failed"
    # Caught up: the write is dropped, so an older watched copy is no longer overridden.
    assert written.newest(_run(9))["metadata"]["resourceVersion"] == "9"


def test_a_write_of_a_deleted_run_never_stands_in_for_its_recreated_namesake() -> None:
    written = cache.WrittenRuns()
    written.remember(_run(10, uid="old", phase="Running"))
    assert written.newest(_run(4, uid="new"))["metadata"]["uid"] == "new"
    written.remember(_run(12, phase="Running"))
    written.forget("ns", "demo")
    assert written.newest(_run(11))["metadata"]["resourceVersion"] == "11"


class _Kube:
    """The API calls ``sync`` may make: status patches are recorded; Job and pod reads are set per test."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.reads: list[str] = []
        self.job: dict[str, Any] | None = None

    def patch_run_status(self, _namespace: str, _name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(patch)
        return _run(100)

    def read_job(self, _namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append(name)
        return self.job

    def list_pods(self, _namespace: str, _job: str) -> list[dict[str, Any]]:
        return []


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> tuple[RunController, _Kube]:
    """A run controller on in-memory indices holding one Suspended run and no Job or pods; its API calls and
    Events are recorded instead of sent."""
    kube = _Kube()
    controller = RunController(kube, OperatorConfig.from_env({}), None,  # type: ignore[arg-type]
                               {"runs": {("ns", "demo"): [_run(5)]}, "jobs": {}, "pods": {}},
                               writes_per_second=1000, run_interval=0, minion_wait=1)
    monkeypatch.setattr(kopf, "event", lambda *a, **k: None)
    return controller, kube


def test_a_job_missing_from_the_cache_is_read_before_the_run_counts_it_gone(synced) -> None:
    controller, kube = synced
    kube.job = _job()
    controller.sync("ns", "demo")
    assert kube.reads == ["demo-train"]
    assert all(p.get("phase") != "Failed" for p in kube.patches), kube.patches


def test_a_job_gone_from_the_cache_and_the_api_ends_the_run(synced) -> None:
    controller, kube = synced
    controller.sync("ns", "demo")
    assert [p["phase"] for p in kube.patches] == ["Failed"]
    assert any(c["reason"] == "JobDeleted" for c in kube.patches[0]["conditions"])


def test_a_cached_job_costs_no_read(synced) -> None:
    controller, kube = synced
    controller.caches["jobs"][("ns", "demo-train")] = [_job()]
    controller.sync("ns", "demo")
    assert kube.reads == []
    assert all(p.get("phase") in (None, "Suspended") for p in kube.patches), kube.patches
