"""The trainer's status sink against the real apiserver, authenticated as the run's ServiceAccount."""

from __future__ import annotations

import pytest

from lora_operator import progress
from lora_trainer.events import Emitter
from lora_trainer.kube_status import KubeStatusSink
from tests.conftest import wait_for
from tests.integration.test_operator_lifecycle import _ltj

pytestmark = pytest.mark.integration


def test_trainer_can_patch_only_its_own_status_and_survives_revocation(
    kubectl, operator, control_plane, namespace, tmp_path
) -> None:
    for name in ("own", "other"):
        kubectl.apply(_ltj(name, suspend=True), namespace)
    for name in ("own", "other"):
        wait_for(f"{name} Suspended", lambda n=name: kubectl.status(namespace, n).get("phase") == "Suspended")
    token_dir = control_plane.write_token_dir(namespace, "own-trainer", tmp_path)
    server = control_plane.server

    sink = KubeStatusSink(name="own", namespace=namespace, server=server, token_dir=token_dir, min_interval=0.2)
    emitter = Emitter([sink])
    emitter.emit(progress.StepEvent(index=0, state="Active"))
    emitter.emit(progress.StepEvent(index=0, state="Completed"))
    for step in range(1, 21):
        emitter.emit(progress.TrainEvent(step=step, totalSteps=20, loss=2.0 - step * 0.05))
    sink.flush()
    status = kubectl.status(namespace, "own")
    assert status["steps"][0]["state"] == "Completed"
    assert status["loss"] == pytest.approx(1.0)
    assert status["phase"] == "Suspended"  # the trainer never touches operator-owned fields
    assert sink.failures == 0 and 1 <= sink.writes < 22

    intruder = KubeStatusSink(name="other", namespace=namespace, server=server, token_dir=token_dir)
    Emitter([intruder]).emit(progress.StepEvent(index=3, state="Active"))
    assert intruder.failures == 1 and intruder.writes == 0
    assert kubectl.status(namespace, "other")["steps"][3]["state"] == "Pending"

    # Revoke: later writes fail, training goes on, nothing raises.
    kubectl("delete", "rolebinding", "own-trainer", "-n", namespace)
    wait_for("the revocation to take effect",
             lambda: kubectl.run("auth", "can-i", "patch", "loratrainingjobs/status",
                                 "--as", f"system:serviceaccount:{namespace}:own-trainer",
                                 "-n", namespace, check=False).stdout.strip() == "no")
    emitter.emit(progress.StepEvent(index=4, state="Active"))
    sink.close(progress.reduce(sink.status, progress.StepEvent(index=4, state="Completed")))
    assert sink.failures >= 1
    assert kubectl.status(namespace, "own")["steps"][4]["state"] == "Pending"
