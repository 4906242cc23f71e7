"""Session fixtures for tests against a real local control plane and the test node.

Use with ``pytest_plugins = ["tests.cluster.fixtures"]`` in the root conftest, or import
``control_plane`` and ``cluster_test_node`` (the latter is registered as ``test_node``;
its Python name differs so pytest never mistakes it for a test).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.controlplane import ControlPlane
from tests.cluster.testnode import NodeProcess


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + controller manager + scheduler, or the existing cluster."""
    with ControlPlane() as cp:
        yield cp


@pytest.fixture(scope="session", name="test_node")
def cluster_test_node(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess | None]:
    """A Ready test node running pods as local processes; None with an existing cluster,
    whose own nodes run the pods."""
    if control_plane.external:
        yield None
        return
    with NodeProcess(control_plane, tmp_path_factory.mktemp("testnode")) as node:
        yield node
