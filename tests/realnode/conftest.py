"""The real-node tier: a control plane with a real kubelet, containerd and the project's own images.

Every test here runs pods as real containers (tests/cluster/realnode.py); the operator is the
chart's Deployment running the operator image built from operator/Dockerfile, and trainers run
the image built from trainer-image/Dockerfile. The tier needs root; where that is impossible,
``LORA_TEST_SKIP_REAL_NODE=1`` skips it, saying so (CI runs it).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.cluster.realnode import RealCluster, unavailable_reason
from tests.conftest import ROOT, Kubectl, namespace_for, wait_for

RELEASE_NAMESPACE = "lora-system"


def _ref(image: str) -> tuple[str, str]:
    repository, tag = image.rsplit(":", 1)
    return repository, tag


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[RealCluster]:
    if os.environ.get("LORA_TEST_SKIP_REAL_NODE") == "1":
        pytest.skip("LORA_TEST_SKIP_REAL_NODE=1: the real-node tier is skipped")
    reason = unavailable_reason()
    if reason:
        pytest.fail(f"{reason}; set LORA_TEST_SKIP_REAL_NODE=1 to skip the real-node tier")
    with RealCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def rk(real_cluster: RealCluster) -> Kubectl:
    """kubectl against the real-node cluster."""
    assert real_cluster.control_plane is not None
    return Kubectl(real_cluster.control_plane)


@pytest.fixture(scope="session")
def operator_release(real_cluster: RealCluster, rk: Kubectl) -> str:
    """`helm install` of the chart with the locally built images; returns the operator pod's name."""
    operator_repo, operator_tag = _ref(real_cluster.images["OPERATOR_IMAGE"])
    trainer_repo, trainer_tag = _ref(real_cluster.images["TRAINER_IMAGE"])
    helm = str(rk.cp.bin_dir / "helm")
    proc = subprocess.run([
        helm, "install", "lora-operator", str(ROOT / "charts" / "lora-operator"), "-n", RELEASE_NAMESPACE,
        "--create-namespace", "--wait", "--timeout", "3m",
        "--set", f"image.repository={operator_repo}", "--set", f"image.tag={operator_tag}",
        "--set", f"trainer.image.repository={trainer_repo}", "--set", f"trainer.image.tag={trainer_tag}",
        "--set", "syncIntervalSeconds=5",
    ], env=rk.cp.env(), capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pods = rk.run("describe", "pods", "-n", RELEASE_NAMESPACE, check=False).stdout
        raise AssertionError(f"helm install failed:\n{proc.stderr}\n{pods[-3000:]}")
    return wait_for("the operator pod running", lambda: rk(
        "get", "pods", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/name=lora-operator",
        "--field-selector=status.phase=Running", "-o", "jsonpath={.items[0].metadata.name}").strip(), timeout=120)


@pytest.fixture
def real_namespace(rk: Kubectl) -> Iterator[str]:
    yield from namespace_for(rk)
