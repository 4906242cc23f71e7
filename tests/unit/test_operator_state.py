"""The operator keeps per-run state only while a run exists: 1,000 runs that come and go leave nothing behind.

Each run leaves what a real one leaves in the operator (its lock, its entry in the endpoint's directory, its
pod, the response to its last status write, a pending report, a report sequence) and is then deleted, through
the same handlers the watch calls. Every container attribute of those objects must be empty afterwards:
one entry that is never dropped grows with every run name ever seen."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from lora_operator import handlers, progress_server


def _held(*objects: Any) -> dict[str, int]:
    """The number of entries in every dict, set and list attribute of ``objects``."""
    return {f"{type(o).__name__}.{k}": len(v) for o in objects for k, v in vars(o).items()
            if isinstance(v, dict | set | list)}


def test_a_thousand_runs_that_come_and_go_leave_no_per_run_state() -> None:
    endpoint = progress_server.ProgressEndpoint(progress_server.Reviewer(lambda token: {}), handlers.DIRECTORY,
                                                handlers.WRITER, lambda namespace, pod: None)
    memo = SimpleNamespace(endpoint=endpoint)
    state = (handlers.DIRECTORY, handlers.WRITTEN, handlers.WRITER, endpoint)
    before = {**_held(*state), "locks": len(handlers._locks)}
    for i in range(1000):
        namespace, name, uid, pod = "team-a", f"run-{i}", f"uid-{i}", f"pod-{i}"
        key = (namespace, name, uid)
        handlers._lock(namespace, name)
        handlers.DIRECTORY.set_run(namespace, name, uid, "Running")
        handlers.pod_changed(labels={}, annotations={}, namespace=namespace, uid=pod, type="ADDED")
        handlers.DIRECTORY.set_pod(pod, namespace, name)
        handlers.WRITTEN.remember({"metadata": {"namespace": namespace, "name": name, "resourceVersion": str(i)}})
        handlers.WRITER.report(key, {"progress": 50})
        endpoint._sequences[key, pod] = 1  # as an accepted report leaves it
        handlers.pod_changed(labels={}, annotations={}, namespace=namespace, uid=pod, type="DELETED")
        handlers.run_event(type="DELETED", name=name, namespace=namespace, meta={"uid": uid}, memo=memo)
    assert {**_held(*state), "locks": len(handlers._locks)} == before  # as before (other tests' runs aside)
