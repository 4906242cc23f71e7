"""Helm for the chart tests: the binary built with the control plane, and a renderer."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.cluster.controlplane import resolve_bin_dir

CHART = Path(__file__).resolve().parents[2] / "charts" / "lora-operator"

Render = Callable[..., list[dict]]


@pytest.fixture(scope="session")
def helm() -> Path:
    return resolve_bin_dir() / "helm"


def run_helm(helm: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], text=True, capture_output=True, env=env, timeout=120)


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """``render("--set", "k=v", ...)``: the chart's manifests as a list of objects."""

    def _render(*args: str) -> list[dict]:
        proc = run_helm(helm, "template", "demo", str(CHART), "--namespace", "lora-system", *args)
        assert proc.returncode == 0, proc.stderr
        return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]

    return _render
