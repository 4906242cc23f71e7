"""The operator keeps per-run state only while a run exists: 1,000 runs that come and go leave nothing behind.

Each run leaves what a real one leaves in the run controller (its lock, its entry in the endpoint's directory,
its pod, the response to its last status write, a pending report, a report sequence) and is then deleted,
through the same handlers the watch calls. Every container attribute of the controller and the objects it owns
must be empty afterwards: one entry that is never dropped grows with every run name ever seen."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from lora_operator import handlers, progress_server
from lora_operator.builders import OperatorConfig
from lora_operator.run_controller import RunController


def _held(*objects: Any) -> dict[str, int]:
    """The number of entries in every dict, set and list attribute of ``objects``, but the run controller's
    ``caches``: Kopf's own indices (by kind), which Kopf empties as objects go."""
    return {f"{type(o).__name__}.{k}": len(v) for o in objects for k, v in vars(o).items()
            if isinstance(v, dict | set | list) and k != "caches"}


def test_a_thousand_runs_that_come_and_go_leave_no_per_run_state() -> None:
    controller = RunController(None, OperatorConfig.from_env({}), None,  # type: ignore[arg-type]
                               {"runs": {}, "jobs": {}, "pods": {}}, writes_per_second=1000, run_interval=0,
                               minion_wait=1)
    endpoint = progress_server.ProgressEndpoint(progress_server.Reviewer(lambda token: {}), controller.directory,
                                                controller.writer, lambda namespace, pod: None)
    memo = SimpleNamespace(runs=controller, endpoint=endpoint)
    state = (controller, controller.directory, controller.written, controller.writer, endpoint)
    for i in range(1000):
        namespace, name, uid, pod = "team-a", f"run-{i}", f"uid-{i}", f"pod-{i}"
        key = (namespace, name, uid)
        controller._lock(namespace, name)
        controller.directory.set_run(namespace, name, uid, "Running")
        handlers.pod_changed(labels={}, annotations={}, namespace=namespace, uid=pod, type="ADDED", memo=memo)
        controller.directory.set_pod(pod, namespace, name)
        controller.written.remember({"metadata": {"namespace": namespace, "name": name, "resourceVersion": str(i)}})
        controller.writer.report(key, {"progress": 50})
        endpoint._sequences[key, pod] = 1  # as an accepted report leaves it
        handlers.pod_changed(labels={}, annotations={}, namespace=namespace, uid=pod, type="DELETED", memo=memo)
        handlers.run_event(type="DELETED", name=name, namespace=namespace, meta={"uid": uid}, memo=memo)
    assert not any(_held(*state).values()), _held(*state)
