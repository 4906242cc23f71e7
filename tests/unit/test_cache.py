"""The watch-fed caches ``sync`` reads, and what it does where a watch trails the API (no cluster)."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from lora_operator import cache, handlers
from lora_operator.status_writer import StatusWriter


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


class _Writes:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    def __call__(self, _namespace: str, _name: str, patch: dict[str, Any]) -> None:
        self.patches.append(patch)


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> _Writes:
    """``handlers.sync`` on in-memory indices holding one Suspended run and no Job or pods; its writes and
    Events are recorded instead of sent."""
    writes = _Writes()
    monkeypatch.setattr(handlers, "WRITER", StatusWriter(writes, rate=1000, run_interval=0))
    monkeypatch.setattr(handlers, "WRITTEN", cache.WrittenRuns())
    monkeypatch.setattr(handlers, "_CACHES", {"runs": {("ns", "demo"): [_run(5)]}, "jobs": {}, "pods": {}})
    monkeypatch.setattr(kopf, "event", lambda *a, **k: None)
    return writes


def test_a_job_missing_from_the_cache_is_read_before_the_run_counts_it_gone(
        synced: _Writes, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    monkeypatch.setattr(handlers, "_read_job", lambda ns, name: reads.append(name) or _job())
    handlers.sync("ns", "demo")
    assert reads == ["demo-train"]
    assert all(p.get("phase") != "Failed" for p in synced.patches), synced.patches


def test_a_job_gone_from_the_cache_and_the_api_ends_the_run(synced: _Writes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "_read_job", lambda ns, name: None)
    monkeypatch.setattr(handlers, "_list_pods", lambda ns, job: [])
    handlers.sync("ns", "demo")
    assert [p["phase"] for p in synced.patches] == ["Failed"]
    assert any(c["reason"] == "JobDeleted" for c in synced.patches[0]["conditions"])


def test_a_cached_job_costs_no_read(synced: _Writes, monkeypatch: pytest.MonkeyPatch) -> None:
    handlers._CACHES["jobs"][("ns", "demo-train")] = [_job()]
    monkeypatch.setattr(handlers, "_read_job", lambda ns, name: pytest.fail("read the Job despite the cache"))
    handlers.sync("ns", "demo")
    assert all(p.get("phase") in (None, "Suspended") for p in synced.patches), synced.patches
