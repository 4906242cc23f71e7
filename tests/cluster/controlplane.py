"""A real, local Kubernetes control plane for integration tests.

`ControlPlane` runs etcd, kube-apiserver, kube-controller-manager and kube-scheduler as
local processes on free loopback ports, with certificates generated for the run. RBAC,
ServiceAccount admission, the Job controller and the garbage collector are the real
ones, so tests exercise what a cluster would enforce. No kubelet runs: pods are run by
`tests.cluster.testnode`.

Binaries come from ``$KUBEBUILDER_ASSETS`` when it holds all of etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, otherwise from ``build_control_plane.sh``
(cached; slow only on the first build).

Environment:
    LORA_TEST_USE_EXISTING_CLUSTER=1  start nothing; use ``$KUBECONFIG`` (or
                                      ``~/.kube/config``) as is (``bin_dir`` is still
                                      resolved, for kubectl and helm).
    LORA_TEST_KEEP=1                  keep the temporary directory (certificates, logs,
                                      etcd data) after teardown, for debugging.

CLI (foreground, until SIGINT/SIGTERM; writes ``DIR/kubeconfig``)::

    python -m tests.cluster.controlplane up --state-dir DIR [--node-name N] [--gpus 2]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import yaml
from kubernetes import client, config

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build_control_plane.sh"
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CONTROL_PLANE_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
STATE_MARKER = ".lora-test-cluster"


class ControlPlaneError(RuntimeError):
    """A control-plane process failed to start or become ready."""


def resolve_bin_dir() -> Path:
    """Return a directory holding the control-plane binaries, kubectl and helm.

    ``$KUBEBUILDER_ASSETS`` is used only when it has every control-plane binary we
    run (envtest's assets lack the controller manager and scheduler); otherwise the build
    script is run without it so that it does not short-circuit to that directory.
    """
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and all(os.access(Path(assets, b), os.X_OK) for b in CONTROL_PLANE_BINARIES):
        return Path(assets)
    env = {k: v for k, v in os.environ.items() if k != "KUBEBUILDER_ASSETS"}
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], env=env, check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def free_port(preferred: int = 0) -> int:
    """``preferred`` when it is unused, else an unused loopback port the kernel picks (racy, but fine on a test
    machine)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    """Last `lines` lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"<no log: {e}>"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ec_key_args(key: Path) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key)]


def generate_pki(d: Path, extra_ips: tuple[str, ...] = ()) -> None:
    """Write ca, apiserver serving, admin client certs and the service-account key pair.

    ECDSA P-256 keys keep generation fast; the openssl CLI avoids a crypto dependency.
    ``extra_ips`` are more addresses the apiserver serves on (a real node's pods reach it there).
    """
    d.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", *_ec_key_args(d / "ca.key"), "-out", str(d / "ca.crt"), "-days", "3650",
        "-subj", "/CN=lora-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip
    ca = ["-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"), "-days", "3650"]
    sans = ["IP:127.0.0.1", "IP:10.0.0.1", *(f"IP:{ip}" for ip in extra_ips), "DNS:localhost", "DNS:kubernetes",
            "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local"]  # fmt: skip
    _openssl(
        "req", "-x509", *_ec_key_args(d / "apiserver.key"), "-out", str(d / "apiserver.crt"), *ca,
        "-subj", "/CN=kube-apiserver",
        "-addext", "subjectAltName=" + ",".join(sans),
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
        "-addext", "extendedKeyUsage=serverAuth",
    )  # fmt: skip
    client_certificate(d, "admin", "lora-test-admin", "system:masters")
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(d / "sa.key"))
    _openssl("pkey", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub"))


def client_certificate(d: Path, name: str, common_name: str, organization: str) -> None:
    """``d/NAME.crt`` and ``d/NAME.key``: a client certificate signed by ``d/ca.*`` (user CN in group O)."""
    _openssl(
        "req", "-x509", *_ec_key_args(d / f"{name}.key"), "-out", str(d / f"{name}.crt"),
        "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"), "-days", "3650",
        "-subj", f"/O={organization}/CN={common_name}",
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
        "-addext", "extendedKeyUsage=clientAuth",
    )  # fmt: skip


def write_kubeconfig(path: Path, server: str, pki: Path, user: str = "admin") -> None:
    """Write a self-contained kubeconfig for ``pki/USER.crt`` (certificates embedded, so it can be copied)."""

    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lora-test", "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")}}],
        "users": [
            {
                "name": "admin",
                "user": {"client-certificate-data": b64(f"{user}.crt"), "client-key-data": b64(f"{user}.key")},
            }
        ],
        "contexts": [
            {"name": "lora-test", "context": {"cluster": "lora-test", "user": "admin", "namespace": "default"}}
        ],
        "current-context": "lora-test",
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)


class Started:
    """A context manager that is started on entry (and stopped again if starting fails half-way)."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ControlPlane(Started):
    """Context manager running a local control plane; see the module docstring.

    Attributes (valid after start):
        bin_dir: directory with etcd, kube-*, kubectl and helm.
        kubeconfig: admin kubeconfig (system:masters) for the cluster.
        server: the apiserver URL, e.g. ``https://127.0.0.1:PORT``.
        workdir: certificates, logs and etcd data (None for an existing cluster).
        external: True when LORA_TEST_USE_EXISTING_CLUSTER=1.
    """

    def __init__(self, workdir: Path | None = None, advertise_address: str | None = None) -> None:
        """`workdir` is used (and kept) if given; otherwise a temporary dir is made.

        `advertise_address`: a non-loopback address of this host for a real node (tests/cluster/realnode.py):
        the apiserver then listens on all addresses, publishes that one as the `kubernetes` Service's
        endpoint (pods reach it through kube-proxy), can reach kubelets (logs, exec), and the node
        lifecycle controller runs (it lifts a real node's not-ready taint). Without it, loopback only.
        """
        self.external = os.environ.get("LORA_TEST_USE_EXISTING_CLUSTER") == "1"
        self.advertise_address = advertise_address
        self._given_workdir = workdir
        self.workdir: Path | None = None
        self.bin_dir = Path()
        self.kubeconfig = Path()
        self.server = ""
        self._procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self._args: dict[str, list[str]] = {}  # each process's flags, for restart()
        self._ready: dict[str, Callable[[], bool]] = {}

    def api_client(self) -> client.ApiClient:
        """A fresh admin client for the cluster."""
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def write_token_dir(self, namespace: str, service_account: str, target: Path) -> Path:
        """``target`` holding ``token`` and ``ca.crt`` as the trainer's projected token volume does."""
        token = subprocess.run(
            [str(self.bin_dir / "kubectl"), "create", "token", service_account, "-n", namespace, "--duration=10m"],
            check=True, capture_output=True, text=True, env=self.env()).stdout.strip()
        cluster = yaml.safe_load(self.kubeconfig.read_text())["clusters"][0]["cluster"]
        target.mkdir(parents=True, exist_ok=True)
        (target / "token").write_text(token)
        (target / "ca.crt").write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        return target

    def env(self) -> dict[str, str]:
        """os.environ with KUBECONFIG set and bin_dir first on PATH, for kubectl/helm/subprocesses."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", "")])
        return env

    def start(self) -> None:
        """Start (or attach to) the cluster and wait until it serves and has default/default SA."""
        started = time.monotonic()
        self.bin_dir = resolve_bin_dir()
        if self.external:
            self.kubeconfig = Path(os.environ.get("KUBECONFIG") or Path.home() / ".kube" / "config")
            self.server = self.api_client().configuration.host
            return
        if self._given_workdir is not None:
            self.workdir = self._given_workdir
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="lora-controlplane-"))
        wd = self.workdir
        pki = wd / "pki"
        generate_pki(pki, extra_ips=(self.advertise_address,) if self.advertise_address else ())
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        self.kubeconfig = wd / "kubeconfig"
        write_kubeconfig(self.kubeconfig, self.server, pki)

        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn("etcd", [
            "--name=default", f"--data-dir={wd / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}", "--initial-cluster-state=new",
            "--unsafe-no-fsync",  # throwaway data: fsync only slows tests down
        ])  # fmt: skip
        self._ready["etcd"] = lambda: _http_ok(f"127.0.0.1:{etcd_port}", "/health", None)
        self._wait("etcd", 30, self._ready["etcd"])

        if self.advertise_address:
            network = [
                "--bind-address=0.0.0.0", f"--advertise-address={self.advertise_address}",
                f"--kubelet-client-certificate={pki / 'admin.crt'}", f"--kubelet-client-key={pki / 'admin.key'}",
                "--kubelet-preferred-address-types=InternalIP",
            ]  # fmt: skip
        else:
            # Endpoints may not hold a loopback IP; the process node's pods reach the apiserver directly
            network = ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"]
        self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd_url}", *network, f"--secure-port={api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=false",
            "--profiling=false",
        ])  # fmt: skip
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._ready["kube-apiserver"] = lambda: _http_ok(f"127.0.0.1:{api_port}", "/readyz", ctx)
        self._wait("kube-apiserver", 90, self._ready["kube-apiserver"])

        kube = ["--kubeconfig", "--authentication-kubeconfig", "--authorization-kubeconfig"]
        kube_args = [f"{flag}={self.kubeconfig}" for flag in kube]
        self._spawn("kube-controller-manager", [
            *kube_args, "--leader-elect=false", "--secure-port=0",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials",
            f"--flex-volume-plugin-dir={wd / 'flexvolume'}",  # default is a host path it creates
            # the process node does not heartbeat like a kubelet: no taints, no evictions for it
            "--controllers=*" if self.advertise_address else "--controllers=*,-nodelifecycle",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [*kube_args, "--leader-elect=false", "--secure-port=0"])
        core = client.CoreV1Api(self.api_client())
        self._wait("kube-controller-manager", 90, lambda: _defaults_exist(core))
        print(f"control plane ready at {self.server} in {time.monotonic() - started:.1f}s", file=sys.stderr)

    def stop(self) -> None:
        """Stop all processes (newest first) and remove the temporary directory."""
        for _, proc, _ in reversed(self._procs):
            terminate_group(proc, grace=10)
        self._procs.clear()
        if self.workdir is not None and self._given_workdir is None and os.environ.get("LORA_TEST_KEEP") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif self.workdir is not None:
            print(f"control plane files kept in {self.workdir}", file=sys.stderr)

    def stop_process(self, name: str) -> None:
        """Stop one control-plane process (SIGTERM, as systemd or the kubelet would); its data stays."""
        entry = next(e for e in self._procs if e[0] == name)
        terminate_group(entry[1], grace=10)
        self._procs.remove(entry)

    def start_process(self, name: str) -> None:
        """Start a process ``stop_process`` stopped again, with the same flags, ports and data dir (etcd keeps
        its data), and wait until it serves and so does the apiserver (which needs etcd)."""
        self._spawn(name, self._args[name])
        for what, ready in self._ready.items():
            self._wait(what, 90, ready)

    def _spawn(self, name: str, args: list[str]) -> None:
        assert self.workdir is not None
        self._args[name] = args
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [str(self.bin_dir / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group, so teardown reaches children too
            )
        self._procs.append((name, proc, log_path))

    def _wait(self, what: str, timeout: float, ready: Callable[[], bool]) -> None:
        """Poll `ready` until true; fail early, with the log, if any process died."""
        deadline = time.monotonic() + timeout
        while True:
            for name, proc, log_path in self._procs:
                if proc.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with {proc.returncode}; last lines of {log_path}:\n{log_tail(log_path)}"
                    )
            if ready():
                return
            if time.monotonic() > deadline:
                log_path = next((p for n, _, p in self._procs if n == what), self._procs[-1][2])
                raise ControlPlaneError(
                    f"{what} not ready after {timeout}s; last lines of {log_path}:\n{log_tail(log_path)}"
                )
            time.sleep(0.25)


def _http_ok(hostport: str, path: str, ctx: ssl.SSLContext | None) -> bool:
    conn: http.client.HTTPConnection = (
        http.client.HTTPSConnection(hostport, context=ctx, timeout=5)
        if ctx
        else http.client.HTTPConnection(hostport, timeout=5)
    )
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _defaults_exist(core: client.CoreV1Api) -> bool:
    """The serviceaccount and root-CA publisher controllers have run in `default`."""
    try:
        core.read_namespaced_service_account("default", "default")
        core.read_namespaced_config_map("kube-root-ca.crt", "default")
        return True
    except client.ApiException as e:
        if e.status == 404:
            return False
        raise


def terminate_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group, SIGKILL it after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def _prepare_state_dir(state_dir: Path) -> None:
    """Reuse a previous run's state dir; refuse to wipe a directory that is not ours."""
    if state_dir.exists() and any(state_dir.iterdir()):
        if not (state_dir / STATE_MARKER).exists():
            raise SystemExit(f"{state_dir} is not empty and not a previous state dir; refusing to wipe it")
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_MARKER).touch()


def main(argv: list[str] | None = None) -> None:
    """`up`: run control plane + test node in the foreground until SIGINT/SIGTERM."""
    from tests.cluster.testnode import DEFAULT_NODE_NAME, NodeProcess

    parser = argparse.ArgumentParser(prog="python -m tests.cluster.controlplane")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start control plane and test node; writes STATE_DIR/kubeconfig")
    up.add_argument("--state-dir", type=Path, required=True)
    up.add_argument("--node-name", default=DEFAULT_NODE_NAME)
    up.add_argument("--gpus", type=int, default=2)
    args = parser.parse_args(argv)

    state_dir: Path = args.state_dir.resolve()
    _prepare_state_dir(state_dir)
    stop = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with (
        ControlPlane(workdir=state_dir) as cp,
        NodeProcess(cp, state_dir / "node", name=args.node_name, gpus=args.gpus),
    ):
        print(f"export KUBECONFIG={cp.kubeconfig}\nexport PATH={cp.bin_dir}:$PATH", flush=True)
        print("cluster up; Ctrl-C to stop", file=sys.stderr, flush=True)
        while not stop:
            time.sleep(0.2)
    print("cluster stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
