"""Shared fixtures: the local control plane (tests/cluster) and a running operator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import yaml

from lora_contract.api import TrainerStatus
from lora_contract.xp import xp_for
from tests.cluster.controlplane import ControlPlane, free_port
from tests.cluster.registry import Registry
from tests.cluster.s3server import S3Server
from tests.http_fakes import Judge, judge

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
        # Nor may the jsonpath filter fail the check: it errors on a CRD whose conditions are still null.
        for crd in ("loratrainingjobs.lora.airepublic.io", "minions.lora.airepublic.io"):
            wait_for(f"CRD {crd} to be Established", lambda crd=crd: self.run(
                "get", f"crd/{crd}", "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                check=False).stdout.strip() == "True", timeout=60)

    def status(self, namespace: str, name: str) -> dict:
        """The status of LoraTrainingJob ``namespace/name`` ({} while it has none or does not exist)."""
        return (self.get("ltj", name, namespace) or {}).get("status") or {}

    def events(self, namespace: str, name: str, containing: str, timeout: float = 30) -> str:
        """The Events of object ``name``, once one mentions ``containing``: Kopf posts Events from a queue of
        its own, so one may trail the status write it goes with by a moment."""
        return wait_for(f"an Event of {name} with {containing!r}", lambda: (e := self(
            "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")) and containing in e
            and e, timeout=timeout)

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


# A Node no kubelet runs, closed to the scheduler: a pod bound to it exists (its ServiceAccount token
# works) but never runs. Not a missing node: the pod garbage collector deletes pods of those in ~40 s.
PARKING_NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "lora-parking"},
                "spec": {"unschedulable": True}}


def parked_pod(run: str, name: str) -> dict:
    """A pod of ``run`` as its Job makes them (labels, ServiceAccount), parked on PARKING_NODE."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"lora.airepublic.io/job": run,
                                                  "app.kubernetes.io/managed-by": "lora-operator"}},
            "spec": {"serviceAccountName": f"{run}-trainer", "nodeName": PARKING_NODE["metadata"]["name"],
                     "automountServiceAccountToken": False, "containers": [{"name": "trainer", "image": "none"}]}}


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
            try:
                s = self.kubectl.status(self.namespace, self.name)
            except AssertionError:  # the apiserver is down (a fault test): look again in a moment
                time.sleep(1.0)
                continue
            trainer = s.get("trainer") or {}
            snap = {"phase": s.get("phase"), **{k: trainer.get(k) for k in ("stepSummary", "progress", "loss",
                                                                             "trainingStep")}}
            if s and (not self.seen or snap != self.seen[-1]):
                self.seen.append(snap)
            if s.get("phase") in ("Succeeded", "Failed"):
                return
            time.sleep(1.0)  # the trainer reports every few seconds; kubectl itself costs CPU


def assert_succeeded_with_results(status: dict, namespace: str, name: str) -> None:
    """A whole run's status: Succeeded, every step done, before/after metrics, improvements, and the XP the
    operator computes from what the trainer reported."""
    assert status["phase"] == "Succeeded", status.get("message")
    trainer = status["trainer"]
    assert trainer["progress"] == 100 and trainer["stepSummary"] == "9/9 improvements"
    assert all(s["state"] in ("Completed", "Skipped") for s in trainer["steps"]), trainer["steps"]
    assert trainer["before"]["overall"] is not None and trainer["after"]["overall"] is not None
    assert trainer["before"]["items"] == trainer["after"]["items"]
    assert trainer["improvements"] and trainer["trainItems"] > 0
    assert status["xp"] > 0 and status["xp"] == xp_for(TrainerStatus.model_validate(trainer))
    # The process node maps /output to a local folder, so only the run's own part of the path is fixed.
    assert trainer["artifacts"]["adapter"].endswith(f"/{namespace}/{name}/adapter")
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True" and conditions["XPAwarded"]["status"] == "True"


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


def make_tls(folder: Path, *names: str) -> Path:
    """A CA and a serving certificate for ``names`` (DNS names or IPs) in ``folder``, as the chart's Secret
    holds them: ca.crt, tls.crt, tls.key."""
    folder.mkdir(parents=True, exist_ok=True)
    sans = ",".join(f"IP:{n}" if n.replace(".", "").isdigit() else f"DNS:{n}" for n in names)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=lora-test-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={names[0]}", "-keyout", "tls.key",
            "-out", "tls.csr")
    (folder / "san.ext").write_text(f"subjectAltName={sans}\n")
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "san.ext", "-out", "tls.crt")
    return folder


@pytest.fixture(scope="session")
def progress_tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The operator's progress endpoint certificate for a local operator process (trainers reach 127.0.0.1)."""
    return make_tls(tmp_path_factory.mktemp("progress-tls"), "localhost", "127.0.0.1")


class OperatorProcess:
    """``python -m lora_operator`` as a subprocess with the admin kubeconfig (or a given one), its progress
    endpoint on a free local port (unless the environment already says where, as the chart's test does)."""

    def __init__(self, cp: ControlPlane, log_dir: Path, kubeconfig: Path | None = None,
                 tls_dir: Path | None = None) -> None:
        self.cp, self.log_dir, self.kubeconfig, self.tls_dir = cp, log_dir, kubeconfig, tls_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.port = free_port()  # kept across restarts: running trainers keep their URL

    @property
    def log(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        env = self.cp.env()
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("LORA_SYNC_INTERVAL_SECONDS", "3")  # tests notice Stalled sooner; the bench sets 30
        if self.tls_dir:
            env.setdefault("LORA_PROGRESS_TLS_DIR", str(self.tls_dir))
            env.setdefault("LORA_PROGRESS_PORT", str(self.port))
            env.setdefault("LORA_PROGRESS_URL", f"https://127.0.0.1:{self.port}")
        env.setdefault("LORA_STATUS_RUN_INTERVAL_SECONDS", "1")
        if self.kubeconfig:
            env["KUBECONFIG"] = str(self.kubeconfig)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "lora_operator", "--verbose"], env=env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for("the operator to start watching", lambda: b"Starting the watch-stream" in self.log.read_bytes()
                 or self.proc.poll() is not None, timeout=60)
        assert self.proc.poll() is None, f"operator exited:\n{self.log.read_text()[-3000:]}"

    def kill(self) -> None:
        """SIGKILL: a crash or an OOM kill, with no cleanup handler run (``stop`` lets Kopf shut down)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (SeaweedFS) on this host, for the output destinations."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A new, empty bucket of ``s3_server``."""
    return s3_server.bucket(f"lora-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real OCI registry (CNCF distribution, Debian's docker-registry) with basic auth, on this host."""
    registry = Registry(tmp_path_factory.mktemp("registry")).start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def operator(control_plane: ControlPlane, crds: None, tmp_path: Path, progress_tls: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(control_plane, tmp_path, tls_dir=progress_tls)
    op.start()
    yield op
    op.stop()
    # Shown by pytest only when the test failed.
    print(f"--- operator log ({op.log}) ---\n" + "\n".join(op.log.read_text().splitlines()[-80:]))


@pytest.fixture
def tiny_model_pvc(kubectl: Kubectl, namespace: str, test_node) -> str:
    """A PVC "models" holding a tiny Llama in tiny/, as a model store would; returns the volume's path.

    The test node runs pods as local processes and rewrites mount paths only in the command and
    environment, not inside the mounted spec file, so the run mounts the volume at its real path.
    """
    from tests.trainer.tiny import build_tiny_model  # torch: only for the tests that train

    kubectl.apply(pvc("models"), namespace)
    root = kubectl.bound_dir(namespace, "models")
    texts = (ROOT / "trainer-image/lora_trainer/data/minion_handbook.jsonl").read_text().splitlines()
    build_tiny_model(root / "tiny", texts)
    return str(root)


TINY_LORA = {"maxSteps": 120, "batchSize": 4, "gradientAccumulationSteps": 1, "learningRate": 0.005,
             "loggingSteps": 5, "evalSteps": 40, "saveSteps": 40, "maxLength": 128,
             "targetModules": ["q_proj", "v_proj"]}


def tiny_run(name: str, models: str, **overrides) -> dict:
    """A LoraTrainingJob training the tiny model of ``tiny_model_pvc`` into the PVC "artifacts"."""
    spec = {
        "model": {"path": f"{models}/tiny"},
        "volumes": [{"name": "models", "claimName": "models", "mountPath": models}],
        "datasets": [{"builtin": "minion-handbook"}],
        "lora": TINY_LORA,
        "evaluation": {"heldOutItems": 4, "generation": {"maxNewTokens": 8}},
        # The process node advertises GPUs it does not have: the run asks for one and allows the CPU.
        "resources": {"gpu": 1, "cpuFallback": True, "cpu": "1", "memory": "2Gi"},
        "output": {"claimName": "artifacts"},
    }
    spec.update(overrides)
    return {"apiVersion": "lora.airepublic.io/v1alpha1", "kind": "LoraTrainingJob", "metadata": {"name": name},
            "spec": spec}


def trainer_pid(kubectl: Kubectl, namespace: str, name: str) -> int:
    """The process group of the run's newest running trainer pod: the test node runs each pod as a local
    process group whose id is in the container ID (``lora-test://<pid>``)."""
    pods = yaml.safe_load(kubectl("get", "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={name}-train",
                                  "-o", "yaml"))["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"
               and (p["status"].get("containerStatuses") or [{}])[0].get("containerID")]
    pod = max(running, key=lambda p: p["metadata"]["creationTimestamp"])
    return int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("lora-test://"))


def trainer_running(kubectl: Kubectl, namespace: str, name: str) -> bool:
    """The run has a running trainer pod (its process group exists: the test node starts it as it reports the
    pod Running)."""
    try:
        return bool(trainer_pid(kubectl, namespace, name))
    except ValueError:  # no running pod yet
        return False


@contextmanager
def held_trainer(kubectl: Kubectl, namespace: str, name: str, timeout: float = 180) -> Iterator[int]:
    """``frozen_trainer`` from the moment the run's trainer pod runs: a test that needs the run mid-way at a point
    of its choosing gets there with ``run_until``, since the tiny model may train to the end between two polls
    for anything that comes later (a report, a checkpoint). Yields the process group id."""
    wait_for("the trainer pod", lambda: trainer_running(kubectl, namespace, name), timeout=timeout)
    with frozen_trainer(kubectl, namespace, name) as pgid:
        yield pgid


@contextmanager
def frozen_trainer(kubectl: Kubectl, namespace: str, name: str) -> Iterator[int]:
    """The run's trainer stopped (SIGSTOP) inside the block: the tiny model trains 50 steps a second, so a
    test that needs the trainer to outlast an operator restart holds it still instead of racing it. Yields
    the process group id; a group killed inside the block (its pod deleted) is fine."""
    pid = trainer_pid(kubectl, namespace, name)
    os.killpg(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGCONT)


def run_until(pgid: int, done: Callable[[], bool], slice_s: float, timeout: float = 180,
              pause_s: float = 0.0) -> None:
    """Let a frozen (SIGSTOPped) trainer run in slices of ``slice_s`` until ``done()``, which is checked while
    it is stopped: at 50 steps/s this is how a test stops it at a point of its choosing, not a sleep's. Between
    slices it stays stopped at least ``pause_s``: for a ``done`` that waits on something other than the trainer
    (the operator's writes) and costs nothing to check, so the trainer would otherwise run almost free."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"the trainer did not get there in {timeout}s"
        os.killpg(pgid, signal.SIGCONT)
        time.sleep(slice_s)
        os.killpg(pgid, signal.SIGSTOP)
        time.sleep(pause_s)


def sigterm_pending(pid: int) -> bool:
    """SIGTERM was sent to the (stopped) process ``pid`` and waits for it to run: a test that holds the trainer
    with SIGSTOP lets it go only then, so the signal lands where the test stopped it, not steps later."""
    try:
        fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":\t" in line)
    except FileNotFoundError:
        return False
    bit = 1 << (signal.SIGTERM - 1)
    return any(int(fields.get(key, "0"), 16) & bit for key in ("ShdPnd", "SigPnd"))


def training_step(kubectl: Kubectl, namespace: str, name: str) -> int:
    return (kubectl.status(namespace, name).get("trainer") or {}).get("trainingStep") or 0


@pytest.fixture
def judge_server() -> Iterator[type[Judge]]:
    """A local OpenAI-compatible judge: set ``reply`` (and ``status``), or ``script``, ``scorer`` and ``gate``
    (``tests.http_fakes.Judge``); read ``seen``; point graders at ``url``."""
    with judge() as handler:
        yield handler
