"""Shared fixtures: the local control plane (tests/cluster) and a running operator."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cluster.controlplane import ControlPlane

pytest_plugins = ["tests.cluster.fixtures"]

ROOT = Path(__file__).resolve().parents[1]


class Kubectl:
    """kubectl against the test cluster, returning stdout; raises with stderr on failure."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def run(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.cp.bin_dir / "kubectl"), *args], input=input, text=True,
                              capture_output=True, env=self.cp.env(), timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def __call__(self, *args: str, input: str | None = None) -> str:
        return self.run(*args, input=input).stdout

    def apply(self, manifest: dict | str, namespace: str) -> str:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        return self("apply", "-n", namespace, "-f", "-", input=text)

    def wait_crd_established(self) -> None:
        # Not `kubectl wait`: right after creation the CRD may have no conditions yet, which it treats as an error.
        wait_for("the CRD to be Established", lambda: self(
            "get", "crd/loratrainingjobs.lora.airepublic.io",
            "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}").strip() == "True", timeout=60)

    def status(self, namespace: str, name: str) -> dict:
        """The status of LoraTrainingJob ``namespace/name`` ({} while it has none or does not exist)."""
        return (self.get("ltj", name, namespace) or {}).get("status") or {}

    def bound_dir(self, namespace: str, claim: str) -> Path:
        """The host folder of the hostPath PV that PVC ``namespace/claim`` gets bound to (both test nodes)."""
        volume = wait_for(f"PVC {claim} bound", lambda: (self.get("pvc", claim, namespace) or {})
                          .get("spec", {}).get("volumeName"), timeout=60)
        return Path(self.get("pv", volume, "")["spec"]["hostPath"]["path"])

    def get(self, kind: str, name: str, namespace: str) -> dict | None:
        proc = self.run("get", kind, name, "-n", namespace, "-o", "yaml", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            raise AssertionError(proc.stderr)
        return yaml.safe_load(proc.stdout)


def pvc(name: str, storage: str = "1Gi") -> dict:
    """A ReadWriteOnce PersistentVolumeClaim manifest (the test nodes' provisioner binds it)."""
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}}}


def wait_for(what: str, check, timeout: float = 120, interval: float = 0.5):
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout.

    A check may return a list ``[False, detail...]`` to show what it last saw on timeout.
    """
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last and not (isinstance(last, list) and last[0] is False):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


class StatusRecorder(threading.Thread):
    """Records every distinct (phase, step, progress, loss) the resource shows while a run goes on."""

    def __init__(self, kubectl, namespace: str, name: str) -> None:
        super().__init__(daemon=True)
        self.kubectl, self.namespace, self.name = kubectl, namespace, name
        self.seen: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            s = self.kubectl.status(self.namespace, self.name)
            snap = {k: s.get(k) for k in ("phase", "stepSummary", "progress", "loss", "trainingStep")}
            if s and (not self.seen or snap != self.seen[-1]):
                self.seen.append(snap)
            if s.get("phase") in ("Succeeded", "Failed"):
                return
            time.sleep(1.0)  # the trainer reports every few seconds; kubectl itself costs CPU


def assert_succeeded_with_results(status: dict, namespace: str, name: str) -> None:
    """A whole run's status: Succeeded, every step done, before/after metrics, improvements and XP."""
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["progress"] == 100 and status["stepSummary"] == "9/9 improvements"
    assert all(s["state"] in ("Completed", "Skipped") for s in status["steps"]), status["steps"]
    assert status["before"]["overall"] is not None and status["after"]["overall"] is not None
    assert status["before"]["items"] == status["after"]["items"]
    assert status["improvements"] and status["xp"] > 0 and status["trainItems"] > 0
    # The process node maps /output to a local folder, so only the run's own part of the path is fixed.
    assert status["artifacts"]["adapter"].endswith(f"/{namespace}/{name}/adapter")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    return Kubectl(control_plane)


@pytest.fixture(scope="session")
def crds(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(ROOT / "crds"))
    kubectl.wait_crd_established()


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    yield from namespace_for(kubectl)


@pytest.fixture(scope="module")
def module_namespace(kubectl: Kubectl) -> Iterator[str]:
    """One namespace for a module whose tests need no operator and leave nothing behind."""
    yield from namespace_for(kubectl)


def namespace_for(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace on ``kubectl``'s cluster, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    # Wait (while the test's operator still runs and can drop its finalizers), so no later test's
    # operator meets this namespace half-deleted.
    kubectl.run("delete", "namespace", name, "--timeout=90s", check=False)


class OperatorProcess:
    """``python -m lora_operator`` as a subprocess with the admin kubeconfig (or a given one)."""

    def __init__(self, cp: ControlPlane, log_dir: Path, kubeconfig: Path | None = None) -> None:
        self.cp, self.log_dir, self.kubeconfig = cp, log_dir, kubeconfig
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        env = self.cp.env()
        env.update(LORA_SYNC_INTERVAL_SECONDS="3", PYTHONUNBUFFERED="1")
        if self.kubeconfig:
            env["KUBECONFIG"] = str(self.kubeconfig)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "lora_operator", "--verbose"], env=env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for("the operator to start watching", lambda: b"Starting the watch-stream" in self.log.read_bytes()
                 or self.proc.poll() is not None, timeout=60)
        assert self.proc.poll() is None, f"operator exited:\n{self.log.read_text()[-3000:]}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def operator(control_plane: ControlPlane, crds: None, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(control_plane, tmp_path)
    op.start()
    yield op
    op.stop()
    # Shown by pytest only when the test failed.
    print(f"--- operator log ({op.log}) ---\n" + "\n".join(op.log.read_text().splitlines()[-80:]))
