"""A real node: kubelet + containerd + runc + a CNI bridge + kube-proxy + CoreDNS, on this host.

`RealCluster` starts a `ControlPlane` that advertises an address pods can reach, then a
node that runs pods as real containers from images built here (tests/cluster/build_images.sh) and
pulled by containerd from a local registry (Debian's docker-registry, as a cluster pulls from its own),
so what only a real kubelet does is tested for real: runAsNonRoot against the image's user,
readOnlyRootFilesystem, memory limits (the kernel's OOM killer, exit 137, reason OOMKilled),
projected tokens, termination messages, emptyDir and PVC mounts, Services and DNS names.

Everything lives under one state folder, except the containerd image store and the registry's
storage, which are cached between runs (the trainer image is gigabytes). The host changes it makes are recorded
first and undone on exit (see `HostChanges` and tests/cluster/README.md): a bridge and its
address, sysctls the kubelet and kube-proxy set, iptables rules, cgroups, network namespaces
and mounts.

Needs root and Debian's containerd, runc, containernetworking-plugins, iptables, conntrack and
docker-registry (`ensure_host_packages`). CLI: ``python -m tests.cluster.realnode up --state-dir DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from kubernetes import client

from tests.cluster import provisioner
from tests.cluster.controlplane import (
    ControlPlane,
    Started,
    client_certificate,
    free_port,
    log_tail,
    terminate_group,
    write_kubeconfig,
)
from tests.cluster.debian import ensure_host_packages
from tests.cluster.registry import Registry

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("LORA_OPERATOR_CACHE") or Path.home() / ".cache" / "lora-operator")
NODE_NAME = "lora-real-node"
BRIDGE = "lora0"
POD_SUBNET = "10.244.0.0/24"
NODE_IP = "10.244.0.1"  # the bridge's address: the node's InternalIP and the apiserver's advertised address
CLUSTER_DNS = "10.0.0.10"
CGROUP_ROOT = "lora-node"
GPUS = 2
CNI_BIN = "/usr/lib/cni"
REGISTRY_PORT = 5115  # the node's image registry, when free (else any: its images are then pulled again)
HOST_PACKAGES = ("containerd", "runc", "containernetworking-plugins", "iptables", "conntrack", "buildah",
                 "mmdebstrap", "docker-registry")  # fmt: skip
# Set by the kubelet (vm.*, kernel.*) and kube-proxy, or by us for bridged Service traffic.
SYSCTLS = (
    "vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops", "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables", "net.ipv4.conf.all.route_localnet",
)  # fmt: skip
IPTABLES = ("iptables", "ip6tables")

log = logging.getLogger("realnode")


class RealNodeError(RuntimeError):
    """The real node could not be set up (missing packages, no root, a component that did not start)."""


def unavailable_reason() -> str | None:
    """Why a real node cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the real node needs root (containerd, runc, iptables, cgroups)"
    if not Path("/sys/fs/cgroup/memory").is_dir():
        return "the real node expects cgroup v1 with the memory controller mounted at /sys/fs/cgroup/memory"
    return None


def build_images(registry: str) -> dict[str, str]:
    """Build (or reuse from the cache) every image the node runs and push it to ``registry`` (host:port);
    REGISTRY and NAME_IMAGE -> value."""
    out = subprocess.run(["bash", str(HERE / "build_images.sh"), registry], check=True, stdout=subprocess.PIPE,
                         text=True)
    env_file = Path(out.stdout.strip().splitlines()[-1])
    return dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


class HostChanges:
    """What the node changes on the host: recorded before it starts, undone after it stops."""

    def __init__(self) -> None:
        self.sysctls: dict[str, str] = {}
        self.iptables: dict[str, str] = {}
        self.netns_before: set[str] = set()

    def record(self) -> None:
        for name in SYSCTLS:
            path = Path("/proc/sys", *name.split("."))
            if path.exists():
                self.sysctls[name] = path.read_text().strip()
        for tool in IPTABLES:
            saved = _run(f"{tool}-save", check=False)
            if saved.returncode == 0:
                self.iptables[tool] = saved.stdout
        self.netns_before = set(os.listdir("/var/run/netns")) if Path("/var/run/netns").is_dir() else set()

    def set_sysctl(self, name: str, value: str) -> None:
        Path("/proc/sys", *name.split(".")).write_text(value)

    def bridge(self) -> None:
        """The CNI bridge, made before the apiserver starts so it can advertise the bridge's address."""
        if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            _run("ip", "link", "del", BRIDGE)
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # Pods talk to each other, Services and the node, never to other networks.
        _run("iptables", "-I", "FORWARD", "-s", POD_SUBNET, "!", "-d", POD_SUBNET, "-j", "DROP")

    def cgroup_root(self) -> None:
        """The kubelet's cgroupRoot must exist in every v1 controller (cpuset needs its cpus and mems)."""
        for ctrl in Path("/sys/fs/cgroup").iterdir():
            if ctrl.is_symlink() or not ctrl.is_dir() or ctrl.name == "unified":
                continue
            node = ctrl / CGROUP_ROOT
            node.mkdir(exist_ok=True)
            if ctrl.name == "cpuset":
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (node / f).write_text((ctrl / f).read_text())

    def restore(self) -> None:
        """Undo everything (each step on its own: one failure must not leave the rest behind)."""
        for ctrl in Path("/sys/fs/cgroup").iterdir():
            root = ctrl / CGROUP_ROOT
            if root.is_dir() and not ctrl.is_symlink():
                for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    _rmdir_cgroup(d)
                _rmdir_cgroup(root)
        if Path("/var/run/netns").is_dir():
            for ns in set(os.listdir("/var/run/netns")) - self.netns_before:
                _run("ip", "netns", "delete", ns, check=False)
        _run("ip", "link", "del", BRIDGE, check=False)
        for tool, saved in self.iptables.items():
            for table in ("filter", "nat", "mangle", "raw"):
                _run(tool, "-t", table, "-F", check=False)
                _run(tool, "-t", table, "-X", check=False)
            subprocess.run([f"{tool}-restore"], input=saved, text=True, capture_output=True, check=False)
        for name, value in self.sysctls.items():
            try:
                self.set_sysctl(name, value)
            except OSError as e:
                log.warning("could not restore %s=%s: %s", name, value, e)


def _rmdir_cgroup(d: Path) -> None:
    for _ in range(20):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)  # its last processes are still exiting
    log.warning("could not remove cgroup %s", d)


def unmount_under(*roots: Path) -> None:
    """Unmount everything mounted below ``roots`` (the kubelet's tmpfs volumes, containerd's rootfs), deepest first."""
    prefixes = tuple(str(r.resolve()) + "/" for r in roots)
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for target in sorted({m for m in mounts if m.startswith(prefixes)}, key=lambda m: -m.count("/")):
        _run("umount", "-l", target, check=False)


class RealCluster(Started):
    """Context manager: control plane + one real node + kube-proxy + CoreDNS + a local-path provisioner.

    Attributes: control_plane, registry (where the node pulls from), images (REGISTRY and NAME_IMAGE ->
    value), state_dir, node_name.
    """

    def __init__(self, state_dir: Path | None = None) -> None:
        self._given_state_dir = state_dir
        self.state_dir = Path()
        self.control_plane: ControlPlane | None = None
        self.registry: Registry | None = None
        self.images: dict[str, str] = {}
        self.node_name = NODE_NAME
        self.host = HostChanges()
        self._procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self._stop = threading.Event()
        self._provisioner: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise RealNodeError(reason)
        started = time.monotonic()
        ensure_host_packages(HOST_PACKAGES)
        self.state_dir = self._given_state_dir or Path(tempfile.mkdtemp(prefix="lora-realnode-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # Loopback only, no auth: the node's own registry (the containerd on this host is its one client). The
        # same port each run keeps the image references, and so the pulled images in the cached store, valid.
        self.registry = Registry(self.state_dir / "registry", storage=CACHE / "registry", auth=False,
                                 bind="127.0.0.1", port=REGISTRY_PORT).start()
        self.images = build_images(self.registry.host())
        self.host.record()
        self.host.bridge()
        for name, value in (("net.ipv4.ip_forward", "1"), ("net.bridge.bridge-nf-call-iptables", "1")):
            self.host.set_sysctl(name, value)
        self.host.cgroup_root()
        self.control_plane = ControlPlane(self.state_dir / "control-plane", advertise_address=NODE_IP)
        self.control_plane.start()
        self._containerd()
        self._forget_stale_images()
        self._kubelet()
        self._kube_proxy()
        self._provisioner = threading.Thread(target=self._provision_loop, name="provisioner", daemon=True)
        self._provisioner.start()
        self._coredns()
        log.info("real node ready in %.1fs (state in %s)", time.monotonic() - started, self.state_dir)

    def stop(self) -> None:
        self._stop.set()
        core = self._core_or_none()
        if core is not None and self._running("kubelet"):
            self._drain(core)
        for name, proc, _ in reversed(self._procs):
            if name != "containerd":
                terminate_group(proc, grace=15)
        if self._running("containerd"):
            self._kill_containers()
        for name, proc, _ in reversed(self._procs):
            if name == "containerd":
                terminate_group(proc, grace=15)
        self._procs.clear()
        if self.control_plane is not None:
            self.control_plane.stop()
        if self.registry is not None:
            self.registry.stop()
        if self.state_dir != Path():
            unmount_under(self.state_dir, self._containerd_root)
        if self.host.sysctls:
            if self.state_dir != Path():
                self._kube_proxy_cleanup()
            self.host.restore()
        if self.state_dir != Path() and self._given_state_dir is None and os.environ.get("LORA_TEST_KEEP") != "1":
            shutil.rmtree(self.state_dir, ignore_errors=True)

    # --- helpers -----------------------------------------------------------------------------
    @property
    def _containerd_root(self) -> Path:
        # Cached between runs: the imported images (gigabytes) stay; containers and sandboxes do not.
        return CACHE / "containerd-root"

    @property
    def containerd_socket(self) -> Path:
        return self.state_dir / "containerd" / "containerd.sock"

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args, check=check)

    def _core_or_none(self) -> client.CoreV1Api | None:
        if self.control_plane is None or not self.control_plane.server:
            return None
        try:
            return client.CoreV1Api(self.control_plane.api_client())
        except Exception:
            return None

    def _running(self, name: str) -> bool:
        return any(n == name and p.poll() is None for n, p, _ in self._procs)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log_path = self.state_dir / f"{name}.log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self._procs.append((name, proc, log_path))
        return proc

    def _wait(self, what: str, timeout: float, ready) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc, log_path in self._procs:
                if proc.poll() is not None:
                    raise RealNodeError(f"{name} exited with {proc.returncode}:\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n} ---\n{log_tail(p, 15)}" for n, _, p in self._procs)
                raise RealNodeError(f"{what} not ready after {timeout}s\n{logs}")
            time.sleep(0.5)

    # --- containerd ----------------------------------------------------------------------------
    def _containerd(self) -> None:
        d = self.state_dir / "containerd"
        cni = self.state_dir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        (cni / "net.d" / "10-lora.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "lora-pods",
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": str(cni / "ipam"),
                          "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }, indent=1))  # fmt: skip
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{self._containerd_root}"
state = "{d / 'state'}"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{d / 'containerd.sock.ttrpc'}"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"
[{cri}]
  sandbox_image = "{self.images['PAUSE_IMAGE']}"
  # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails to lower its oom_score_adj
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{cni / 'net.d'}"
[{cri}.registry]
  config_path = "{d / 'certs.d'}"
"""
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.toml").write_text(config)
        # The node's registry speaks plain HTTP: containerd's hosts.toml says so (as for any insecure registry).
        assert self.registry is not None
        host = self.registry.host()
        (d / "certs.d" / host).mkdir(parents=True, exist_ok=True)
        (d / "certs.d" / host / "hosts.toml").write_text(
            f'server = "http://{host}"\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n')
        self._spawn("containerd", ["containerd", "--config", str(d / "config.toml")])
        self._wait("containerd", 60, lambda: self.containerd_socket.exists()
                   and self.ctr("version", check=False).returncode == 0)
        self._kill_containers()  # a crashed earlier run's containers (the store is cached)

    def _forget_stale_images(self) -> None:
        """Remove from the cached store every image of the project's but today's exact builds.

        An older build's layers are freed (containerd collects what no image refers to), and a release tag
        (0.1.0), which every build moves, is resolved afresh by the kubelet (IfNotPresent would keep a stale
        one); its layers stay, since today's hash-tagged image refers to them. The CRI also names each image
        by its id (``sha256:...``): such a name goes with the project's image it points at.
        """
        current = {ref for key, ref in self.images.items() if key.endswith("_IMAGE")}
        listing = [line.split()[:3] for line in self.ctr("images", "list").stdout.splitlines()[1:]]
        kept = {digest for ref, _, digest in listing if ref in current}
        for ref, _, digest in listing:
            if ref in current or digest in kept:  # today's images, by tag, by digest or by id
                continue
            if "/lora-" in ref or (ref.startswith("sha256:") and self._is_ours(digest, listing)):
                self.ctr("images", "remove", ref, check=False)

    @staticmethod
    def _is_ours(digest: str, listing: list[list[str]]) -> bool:
        """An id-named image no other name points at, or only names of the project's images."""
        names = [ref for ref, _, d in listing if d == digest and not ref.startswith("sha256:")]
        return all("/lora-" in ref for ref in names)

    def _kill_containers(self) -> None:
        for cid in self.ctr("tasks", "list", "--quiet", check=False).stdout.split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", cid, check=False)
        for cid in self.ctr("tasks", "list", "--quiet", check=False).stdout.split():
            self.ctr("tasks", "delete", "--force", cid, check=False)
        for cid in self.ctr("containers", "list", "--quiet", check=False).stdout.split():
            self.ctr("containers", "delete", cid, check=False)

    # --- kubelet -----------------------------------------------------------------------------
    def _kubelet(self) -> None:
        assert self.control_plane is not None and self.control_plane.workdir is not None
        pki = self.control_plane.workdir / "pki"
        d = self.state_dir / "kubelet"
        d.mkdir(parents=True, exist_ok=True)
        client_certificate(pki, "kubelet", f"system:node:{self.node_name}", "system:nodes")
        write_kubeconfig(d / "kubeconfig", self.control_plane.server, pki, user="kubelet")
        resolv = d / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\n")  # pods with dnsPolicy Default: nothing outside the cluster
        port, healthz = free_port(), free_port()
        kubelet_config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP, "port": port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": healthz,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(pki / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{CGROUP_ROOT}", "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "clusterDNS": [CLUSTER_DNS], "clusterDomain": "cluster.local", "resolvConf": str(resolv),
            "failSwapOn": False, "podLogsDir": str(d / "pod-logs"),
            # The images stay once pulled (the trainer image is gigabytes): no image GC, and no eviction
            # before the disk is all but full.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "serializeImagePulls": False, "syncFrequency": "10s", "fileCheckFrequency": "10s",
        }  # fmt: skip
        (d / "config.yaml").write_text(yaml.safe_dump(kubelet_config))
        self._spawn("kubelet", [
            str(self.control_plane.bin_dir / "kubelet"),
            f"--config={d / 'config.yaml'}", f"--kubeconfig={d / 'kubeconfig'}",
            f"--root-dir={d / 'root'}", f"--cert-dir={d / 'pki'}",
            f"--hostname-override={self.node_name}", f"--node-ip={NODE_IP}", "--v=1",
        ])  # fmt: skip
        core = client.CoreV1Api(self.control_plane.api_client())
        self._wait("the kubelet's node", 120, lambda: _node_ready(core, self.node_name))
        # An extended resource, advertised the way the Kubernetes docs show: a node status patch.
        core.patch_node_status(self.node_name, [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu",
                                                 "value": str(GPUS)}], _content_type="application/json-patch+json")
        core.patch_node(self.node_name, {"metadata": {"labels": {"nvidia.com/gpu.present": "true"}}})
        self._wait("nvidia.com/gpu allocatable", 60, lambda: (core.read_node(self.node_name).status.allocatable
                                                              or {}).get("nvidia.com/gpu") == str(GPUS))

    def _drain(self, core: client.CoreV1Api) -> None:
        """Delete every pod on the node, so the kubelet tears down their sandboxes (CNI, mounts) itself."""
        try:
            core.patch_node(self.node_name, {"spec": {"unschedulable": True}})  # no replacements land here
            pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node_name}").items
            for pod in pods:
                core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.ctr("tasks", "list", "--quiet",
                                                           check=False).stdout.strip():
                time.sleep(0.5)
        except Exception as e:  # teardown goes on: _kill_containers is the fallback
            log.warning("draining the node failed: %s", e)

    # --- kube-proxy and CoreDNS --------------------------------------------------------------
    def _kube_proxy_argv(self) -> list[str]:
        assert self.control_plane is not None
        return [str(self.control_plane.bin_dir / "kube-proxy"), f"--kubeconfig={self.control_plane.kubeconfig}"]

    def _kube_proxy(self) -> None:
        self._spawn("kube-proxy", [
            *self._kube_proxy_argv(), f"--hostname-override={self.node_name}", "--proxy-mode=iptables",
            f"--cluster-cidr={POD_SUBNET}", "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
            "--iptables-localhost-nodeports=false",
            f"--healthz-bind-address=127.0.0.1:{free_port()}", f"--metrics-bind-address=127.0.0.1:{free_port()}",
        ])  # fmt: skip
        self._wait("kube-proxy's rules", 60,
                   lambda: "KUBE-SERVICES" in _run("iptables-save", "-t", "nat", check=False).stdout)

    def _kube_proxy_cleanup(self) -> None:
        if self.control_plane is not None and (self.control_plane.bin_dir / "kube-proxy").exists():
            _run(*self._kube_proxy_argv(), "--cleanup", check=False)

    def _coredns(self) -> None:
        assert self.control_plane is not None
        manifest = (HERE / "coredns.yaml").read_text().replace("COREDNS_IMAGE", self.images["COREDNS_IMAGE"])
        manifest = manifest.replace("CLUSTER_DNS", CLUSTER_DNS)
        subprocess.run([str(self.control_plane.bin_dir / "kubectl"), "apply", "-f", "-"], input=manifest,
                       text=True, check=True, capture_output=True, env=self.control_plane.env())
        apps = client.AppsV1Api(self.control_plane.api_client())
        self._wait("CoreDNS", 120, lambda: (apps.read_namespaced_deployment_status("coredns", "kube-system")
                                            .status.ready_replicas or 0) >= 1)

    def _provision_loop(self) -> None:
        assert self.control_plane is not None
        core = client.CoreV1Api(self.control_plane.api_client())
        while not self._stop.wait(1.0):
            try:
                provisioner.provision(core, self.node_name, self.state_dir / "volumes")
            except Exception:
                log.exception("provisioning failed; retrying")


def _node_ready(core: client.CoreV1Api, name: str) -> bool:
    try:
        node = core.read_node(name)
    except client.ApiException as e:
        if e.status == 404:
            return False
        raise
    ready = any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))
    tainted = any(t.key == "node.kubernetes.io/not-ready" for t in (node.spec.taints or []))
    return ready and not tainted


def main(argv: list[str] | None = None) -> None:
    """`up`: run the control plane and the real node in the foreground until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.realnode")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start control plane + real node; writes STATE_DIR/control-plane/kubeconfig")
    up.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with RealCluster(args.state_dir.resolve()) as cluster:
        assert cluster.control_plane is not None
        print(f"export KUBECONFIG={cluster.control_plane.kubeconfig}\n"
              f"export PATH={cluster.control_plane.bin_dir}:$PATH", flush=True)
        for key, ref in sorted(cluster.images.items()):
            print(f"# {key}={ref}", flush=True)
        print("real node up; Ctrl-C to stop", file=sys.stderr, flush=True)
        stop.wait()
    print("real node stopped, host restored", file=sys.stderr)


if __name__ == "__main__":
    main()
