"""kubelet-lite: a fake Node that runs its pods as local processes.

It registers a Node with nominal cpu/memory/pods and ``nvidia.com/gpu`` capacity, keeps
its Ready condition fresh, and runs each pod the scheduler binds to it as a local process
group, reporting pod status like a kubelet, so that the real Job controller, garbage
collector and scheduler drive it. What is emulated and what is not: see README.md here.

Semantics worth knowing:
- Only the first container runs (others and init containers are ignored, with a warning).
  Its image is ignored: ``command + args`` must be runnable from this process's PATH.
- Every restartPolicy behaves like Never: a pod that exits is finished. With OnFailure the
  Job controller therefore sees a failed pod and creates a replacement.
- Container paths do not exist locally, so each volumeMount's ``mountPath`` (longest
  first) and the terminationMessagePath are rewritten to per-pod local paths wherever they
  appear in command, args, env values and workingDir. Paths a program hard-codes are not.
- A pod that mounts a service-account token at the standard path also gets ``KUBECONFIG``
  pointing at a kubeconfig that uses that token, since the in-cluster loaders of client
  libraries read the fixed path /var/run/secrets/kubernetes.io/serviceaccount.
- Pending PVCs are bound to hostPath PVs under the state dir (a local-path provisioner),
  since the scheduler will not place a pod whose claims are unbound.

Run: ``python -m tests.cluster.testnode --kubeconfig K --state-dir D [--name N] [--gpus 2]``
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import yaml
from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines

from tests.cluster import provisioner
from tests.cluster.controlplane import ControlPlane, log_tail, terminate_group

DEFAULT_NODE_NAME = "lora-test-node"
LOCAL_IP = "127.0.0.1"
NOMINAL_CPU = "16"  # nothing enforces requests here; nominal capacity keeps pods schedulable
NOMINAL_MEMORY = "64Gi"
MAX_PODS = "110"
HEARTBEAT_SECONDS = 10.0
GRACE_CAP_SECONDS = 10.0
MESSAGE_LIMIT = 4096
FALLBACK_LINES = 80
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
REPO_ROOT = Path(__file__).resolve().parents[2]

log = logging.getLogger("testnode")
Obj = dict[str, Any]


class PodSetupError(Exception):
    """The pod cannot be started; the message becomes its status message."""


def now() -> str:
    """RFC 3339 UTC timestamp at second precision, as the API stores it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_dict(resp: Any) -> Obj:
    """JSON of a ``_preload_content=False`` response: objects are handled as plain dicts,
    the shape the API and its watch events use."""
    return dict(json.loads(resp.data))


def expand_vars(value: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known vars are replaced, ``$$`` escapes, rest kept."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", repl, value)


def path_rewriter(mapping: dict[str, str]) -> Callable[[str], str]:
    """Replace container path prefixes by local paths, longest first, on path boundaries."""
    keys = sorted((k for k in mapping if k != "/"), key=len, reverse=True)
    if not keys:
        return lambda s: s
    pattern = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(k) for k in keys) + r")(?![\w.-])")
    return lambda s: pattern.sub(lambda m: mapping[m.group(1)], s)


def decode_data(obj: Obj, binary: bool) -> dict[str, bytes]:
    """ConfigMap (data + binaryData) or Secret (base64 data) contents as bytes."""
    if binary:
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    out = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return out


def write_files(target: Path, files: dict[str, bytes], default_mode: int | None) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(default_mode if default_mode is not None else 0o644)


def exit_code(returncode: int) -> int:
    """Popen's -N (killed by signal N) becomes the shell convention 128+N, as a runtime reports."""
    return 128 - returncode if returncode < 0 else returncode


class PodRunner(threading.Thread):
    """Runs one pod: materializes volumes, starts the process, reports status, handles deletion."""

    def __init__(self, node: TestNode, pod: Obj) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.node = node
        self.pod = pod
        self.ns: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.dir = node.state_dir / "pods" / f"{self.ns}_{self.pod_name}_{self.uid}"
        self.container: Obj = pod["spec"]["containers"][0]
        self.grace = GRACE_CAP_SECONDS
        self._delete_requested = threading.Event()  # the pod is being deleted: kill, then finish deletion
        self._abandoned = threading.Event()  # the pod no longer exists (or the node stops): just kill
        self.done = False  # set under the node lock, so a deletion is never missed

    def request_delete(self, grace_seconds: float | None) -> bool:
        """Ask a running pod to stop; False if it is already done (then delete it yourself)."""
        if self.done:
            return False
        if grace_seconds is not None:
            self.grace = min(float(grace_seconds), GRACE_CAP_SECONDS)
        self._delete_requested.set()
        return True

    def abandon(self, grace_seconds: float) -> None:
        """Kill the process without touching the API (pod gone, or node shutting down)."""
        self.grace = min(grace_seconds, self.grace)
        self._abandoned.set()

    # --- API helpers -------------------------------------------------------------------
    def _core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.node.api)

    def _patch_status(self, status: Obj) -> None:
        self._core().patch_namespaced_pod_status(self.pod_name, self.ns, {"status": status})

    def _delete_now(self) -> None:
        """What a kubelet does once the containers are dead: remove the pod for good."""
        try:
            self._core().delete_namespaced_pod(
                self.pod_name,
                self.ns,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=self.uid)),
            )
        except client.ApiException as e:
            if e.status not in (404, 409):
                raise

    def _read(self, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        read = self._core().read_namespaced_secret if kind == "secret" else self._core().read_namespaced_config_map
        try:
            return decode_data(as_dict(read(name, self.ns, _preload_content=False)), binary=kind == "secret")
        except client.ApiException as e:
            if e.status == 404 and optional:
                return None
            if e.status == 404:
                raise PodSetupError(f'{kind} "{name}" not found') from e
            raise

    # --- pod setup ---------------------------------------------------------------------
    def _field(self, field_path: str) -> str:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", field_path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        values = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.podIP": LOCAL_IP,
            "status.hostIP": LOCAL_IP,
        }
        if field_path not in values:
            raise PodSetupError(f"fieldRef {field_path!r} is not supported by the test node")
        return str(values[field_path])

    def _object_files(self, kind: str, src: Obj) -> dict[str, bytes]:
        """Files of a configMap/secret volume or projection, honouring items and optional."""
        name = src.get("name") or src.get("secretName", "")
        data = self._read(kind, name, bool(src.get("optional")))
        if data is None:
            return {}
        items = src.get("items")
        if not items:
            return data
        files = {}
        for item in items:
            if item["key"] not in data:
                if src.get("optional"):
                    continue
                raise PodSetupError(f'{kind} "{name}" has no key "{item["key"]}"')
            files[item["path"]] = data[item["key"]]
        return files

    def _token(self, src: Obj) -> bytes:
        """A real bound token from the TokenRequest API, as the kubelet gets it."""
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        spec = client.V1TokenRequestSpec(
            audiences=[src["audience"]] if src.get("audience") else [],  # empty: the apiserver's own
            expiration_seconds=src.get("expirationSeconds", 3600),
            bound_object_ref=client.V1BoundObjectReference(
                kind="Pod", api_version="v1", name=self.pod_name, uid=self.uid
            ),
        )
        request = client.AuthenticationV1TokenRequest(spec=spec)
        resp = self._core().create_namespaced_service_account_token(sa, self.ns, request)
        token = resp.status.token if resp.status else None
        if not token:
            raise PodSetupError(f'TokenRequest for serviceaccount "{sa}" returned no token')
        return token.encode()

    def _volume(self, vol: Obj, target: Path) -> Path:
        """Materialize one volume under `target` (or find its host dir); return the local path."""
        if "emptyDir" in vol:
            target.mkdir(parents=True, exist_ok=True)
        elif "configMap" in vol:
            write_files(target, self._object_files("configMap", vol["configMap"]), vol["configMap"].get("defaultMode"))
        elif "secret" in vol:
            write_files(target, self._object_files("secret", vol["secret"]), vol["secret"].get("defaultMode"))
        elif "downwardAPI" in vol:
            items = vol["downwardAPI"].get("items", [])
            write_files(target, self._downward(items), vol["downwardAPI"].get("defaultMode"))
        elif "projected" in vol:
            files: dict[str, bytes] = {}
            for src in vol["projected"].get("sources", []):
                if "serviceAccountToken" in src:
                    files[src["serviceAccountToken"]["path"]] = self._token(src["serviceAccountToken"])
                elif "configMap" in src:
                    files.update(self._object_files("configMap", src["configMap"]))
                elif "secret" in src:
                    files.update(self._object_files("secret", src["secret"]))
                elif "downwardAPI" in src:
                    files.update(self._downward(src["downwardAPI"].get("items", [])))
                else:
                    raise PodSetupError(f"projected source {sorted(src)} is not supported by the test node")
            write_files(target, files, vol["projected"].get("defaultMode"))
        elif "persistentVolumeClaim" in vol:
            return self._claim_dir(vol["persistentVolumeClaim"]["claimName"])
        else:
            kinds = sorted(set(vol) - {"name"})
            raise PodSetupError(f"volume {vol['name']!r} of type {kinds} is not supported by the test node")
        return target

    def _downward(self, items: list[Obj]) -> dict[str, bytes]:
        files = {}
        for item in items:
            if "fieldRef" not in item:
                raise PodSetupError("downwardAPI items other than fieldRef are not supported by the test node")
            files[item["path"]] = self._field(item["fieldRef"]["fieldPath"]).encode()
        return files

    def _claim_dir(self, claim: str) -> Path:
        """The host path of the hostPath PV bound to the claim, as a kubelet would mount it."""
        core = self._core()
        try:
            pvc = as_dict(core.read_namespaced_persistent_volume_claim(claim, self.ns, _preload_content=False))
        except client.ApiException as e:
            if e.status == 404:
                raise PodSetupError(f'persistentvolumeclaim "{claim}" not found') from e
            raise
        pv_name = pvc["spec"].get("volumeName")
        if not pv_name:
            raise PodSetupError(f'persistentvolumeclaim "{claim}" is not bound')
        pv = as_dict(core.read_persistent_volume(pv_name, _preload_content=False))
        host_path = pv["spec"].get("hostPath", {}).get("path")
        if not host_path:
            raise PodSetupError(f'persistentvolume "{pv_name}" is not a hostPath volume')
        Path(host_path).mkdir(parents=True, exist_ok=True)
        return Path(host_path)

    def _mounts(self) -> dict[str, str]:
        """Container mountPath -> local path, for the volumes the container mounts."""
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes", [])}
        local: dict[str, Path] = {}
        mapping: dict[str, str] = {}
        for mount in self.container.get("volumeMounts", []):
            name = mount["name"]
            if name not in volumes:
                raise PodSetupError(f"volumeMount {name!r} has no volume")
            if "subPathExpr" in mount:
                raise PodSetupError("subPathExpr is not supported by the test node")
            if name not in local:
                local[name] = self._volume(volumes[name], self.dir / "volumes" / name)
            path = local[name] / mount["subPath"] if mount.get("subPath") else local[name]
            if mount.get("subPath") and not path.exists():
                path.mkdir(parents=True)
            mapping[mount["mountPath"].rstrip("/") or "/"] = str(path)
        return mapping

    def _container_env(self) -> dict[str, str]:
        """The container's own variables (envFrom, then env), $(VAR)-expanded, not yet rewritten."""
        env: dict[str, str] = {}
        for src in self.container.get("envFrom", []):
            kind = "configMap" if "configMapRef" in src else "secret"
            ref = src.get("configMapRef") or src.get("secretRef") or {}
            data = self._read(kind, ref["name"], bool(ref.get("optional"))) or {}
            env.update({src.get("prefix", "") + k: v.decode() for k, v in data.items()})
        for var in self.container.get("env", []):
            name, value_from = var["name"], var.get("valueFrom")
            if value_from is None:
                env[name] = expand_vars(var.get("value", ""), env)
            elif "fieldRef" in value_from:
                env[name] = self._field(value_from["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in value_from or "configMapKeyRef" in value_from:
                kind = "secret" if "secretKeyRef" in value_from else "configMap"
                ref = value_from.get("secretKeyRef") or value_from["configMapKeyRef"]
                data = self._read(kind, ref["name"], bool(ref.get("optional"))) or {}
                if ref["key"] in data:
                    env[name] = data[ref["key"]].decode()
                elif not ref.get("optional"):
                    raise PodSetupError(f'{kind} "{ref["name"]}" has no key "{ref["key"]}"')
            else:
                raise PodSetupError(f"env {name}: valueFrom {sorted(value_from)} is not supported by the test node")
        return env

    def _prepare(self) -> tuple[list[str], dict[str, str], Path, Path]:
        """argv, env, cwd and the local termination-message file for the container."""
        for d in ("home", "work"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        mapping = self._mounts()
        rewrite = path_rewriter(mapping)
        term_path = self.container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        term_local = Path(rewrite(term_path))
        if str(term_local) == term_path:
            # Map only the file itself: mapping its parent (/dev) would also capture /dev/null.
            term_local = self.dir / "termination-log"
            mapping[term_path] = str(term_local)
            rewrite = path_rewriter(mapping)
        term_local.parent.mkdir(parents=True, exist_ok=True)
        term_local.touch()

        own = self._container_env()
        argv = [expand_vars(a, own) for a in [*self.container.get("command", []), *self.container.get("args", [])]]
        if not argv:
            raise PodSetupError("container has no command: image entrypoints are unknown to the test node")
        host, port = self.node.api_host_port
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(self.dir / "home"),
            "HOSTNAME": self.pod_name,
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
        }
        if os.environ.get("PYTHONPATH"):
            # Like PATH: a console script of the node's venv (lora-trainer) finds the checkout's packages where
            # the node does, also where the venv's own install of them points elsewhere.
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        if SA_MOUNT in mapping and (Path(mapping[SA_MOUNT]) / "token").exists():
            env["KUBECONFIG"] = str(self._write_pod_kubeconfig(Path(mapping[SA_MOUNT])))
        env.update({k: rewrite(v) for k, v in own.items()})
        working_dir = self.container.get("workingDir")
        cwd = Path(rewrite(working_dir)) if working_dir and rewrite(working_dir) != working_dir else self.dir / "work"
        cwd.mkdir(parents=True, exist_ok=True)
        return [rewrite(a) for a in argv], env, cwd, term_local

    def _write_pod_kubeconfig(self, sa_dir: Path) -> Path:
        path = self.dir / "kubeconfig"
        cluster: Obj = {"server": self.node.api.configuration.host}
        if (sa_dir / "ca.crt").exists():
            cluster["certificate-authority"] = str(sa_dir / "ca.crt")
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": cluster}],
            "users": [{"name": "pod", "user": {"tokenFile": str(sa_dir / "token")}}],
            "contexts": [{"name": "pod", "context": {"cluster": "cluster", "user": "pod", "namespace": self.ns}}],
            "current-context": "pod",
        }
        path.write_text(yaml.safe_dump(doc))
        return path

    # --- lifecycle ---------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception as e:
            log.exception("pod %s/%s: test node error", self.ns, self.pod_name)
            if not self._abandoned.is_set():
                try:
                    self._fail("TestNodeError", f"the test node failed to run this pod: {e}"[:MESSAGE_LIMIT])
                except Exception:
                    log.exception("pod %s/%s: could not report failure", self.ns, self.pod_name)
        with self.node.lock:
            self.done = True
            delete = self._delete_requested.is_set() and not self._abandoned.is_set()
        if delete:
            self._delete_now()

    def _fail(self, reason: str, message: str) -> None:
        """Mark a pod whose process never ran (or is lost) Failed, with a StartError container."""
        log.warning("pod %s/%s failed: %s: %s", self.ns, self.pod_name, reason, message)
        ts = now()
        terminated = {"exitCode": 128, "reason": "StartError", "message": message, "startedAt": ts, "finishedAt": ts}
        self._patch_status({
            "phase": "Failed", "reason": reason, "message": message, "startTime": ts,
            "hostIP": LOCAL_IP, "hostIPs": [{"ip": LOCAL_IP}],
            "containerStatuses": [self._container_status(False, {"terminated": terminated})],
        })  # fmt: skip

    def _container_status(self, running: bool, state: Obj, container_id: str = "") -> Obj:
        status = {
            "name": self.container["name"],
            "image": self.container.get("image", ""),
            "imageID": "",
            "ready": running,
            "started": running,
            "restartCount": 0,
            "state": state,
        }
        if container_id:
            status["containerID"] = container_id
        return status

    def _conditions(self, ready: bool, reason: str = "") -> list[Obj]:
        ts = now()
        out = []
        for ctype in ("PodScheduled", "PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"):
            is_true = ready or ctype not in ("ContainersReady", "Ready")
            cond = {"type": ctype, "status": "True" if is_true else "False", "lastTransitionTime": ts}
            if not is_true and reason:
                cond["reason"] = reason
            out.append(cond)
        return out

    def _run(self) -> None:
        spec = self.pod["spec"]
        if len(spec["containers"]) > 1 or spec.get("initContainers"):
            log.warning("pod %s/%s: only container %r runs", self.ns, self.pod_name, self.container["name"])
        try:
            argv, env, cwd, term_local = self._prepare()
        except PodSetupError as e:
            self._fail("StartError", str(e))
            return
        out_path, err_path = self.dir / "stdout.log", self.dir / "stderr.log"
        log.info(
            "pod %s/%s: running %s (image %s ignored); logs %s, %s",
            self.ns, self.pod_name, argv, self.container.get("image"), out_path, err_path,
        )  # fmt: skip
        try:
            with out_path.open("wb") as out, err_path.open("wb") as err:
                proc = subprocess.Popen(
                    argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
                )
        except OSError as e:
            self._fail("StartError", f"cannot run {argv[0]!r}: {e}")
            return
        try:
            self._supervise(proc, term_local, out_path, err_path)
        finally:
            # Like a container's end: nothing of the pod outlives its main process.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _supervise(self, proc: subprocess.Popen[bytes], term_local: Path, out_path: Path, err_path: Path) -> None:
        """Report Running, wait for exit, deletion or deadline, then report the outcome."""
        started, started_mono = now(), time.monotonic()
        container_id = f"lora-test://{proc.pid}"
        self._patch_status({
            "phase": "Running", "startTime": started,
            "hostIP": LOCAL_IP, "hostIPs": [{"ip": LOCAL_IP}], "podIP": LOCAL_IP, "podIPs": [{"ip": LOCAL_IP}],
            "conditions": self._conditions(True),
            "containerStatuses": [self._container_status(True, {"running": {"startedAt": started}}, container_id)],
        })  # fmt: skip

        deadline_s = self.pod["spec"].get("activeDeadlineSeconds")
        pod_reason = pod_message = ""
        while True:
            try:
                returncode = proc.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                pass
            if self._abandoned.is_set() or self._delete_requested.is_set():
                returncode = self._kill(proc)
                break
            if deadline_s is not None and time.monotonic() - started_mono > deadline_s:
                pod_reason = "DeadlineExceeded"
                pod_message = "Pod was active on the node longer than the specified deadline"
                returncode = self._kill(proc)
                break
        code = exit_code(returncode)
        log.info("pod %s/%s: exited with %d", self.ns, self.pod_name, code)
        if self._abandoned.is_set():
            return
        message = self._termination_message(term_local, code, out_path, err_path)
        terminated = {
            "exitCode": code, "reason": "Completed" if code == 0 else "Error",
            "startedAt": started, "finishedAt": now(), "containerID": container_id,
        }  # fmt: skip
        if message:
            terminated["message"] = message
        phase = "Succeeded" if code == 0 and not pod_reason else "Failed"
        status: Obj = {
            "phase": phase,
            "conditions": self._conditions(False, "PodCompleted" if phase == "Succeeded" else "PodFailed"),
            "containerStatuses": [
                self._container_status(False, {"running": None, "terminated": terminated}, container_id)
            ],
        }
        if pod_reason:
            status.update(reason=pod_reason, message=pod_message)
        self._patch_status(status)

    def _kill(self, proc: subprocess.Popen[bytes]) -> int:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            return proc.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()
        except ProcessLookupError:
            return proc.wait()

    def _termination_message(self, term_local: Path, code: int, out_path: Path, err_path: Path) -> str:
        try:
            with term_local.open("rb") as f:
                message = f.read(MESSAGE_LIMIT).decode(errors="replace")
        except OSError:
            message = ""
        if message or code == 0 or self.container.get("terminationMessagePolicy") != "FallbackToLogsOnError":
            return message
        lines = [*log_tail(out_path, FALLBACK_LINES).splitlines(), *log_tail(err_path, FALLBACK_LINES).splitlines()]
        text = "\n".join(lines[-FALLBACK_LINES:]).encode()
        return text[-MESSAGE_LIMIT:].decode(errors="replace")


class TestNode:
    """The node agent: registration, heartbeat, PVC provisioning and the pod watch."""

    __test__ = False  # not a pytest test class

    def __init__(self, kubeconfig: Path, state_dir: Path, name: str = DEFAULT_NODE_NAME, gpus: int = 2) -> None:
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.state_dir = state_dir.resolve()
        self.name = name
        self.gpus = gpus
        url = urlsplit(self.api.configuration.host)
        self.api_host_port = (url.hostname or LOCAL_IP, str(url.port or 443))
        self.stop_event = threading.Event()
        self._runners: dict[str, PodRunner] = {}
        self.lock = threading.Lock()  # guards _runners and PodRunner.done
        self._since = now()

    # --- node object -------------------------------------------------------------------
    def register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "nvidia.com/gpu.present": "true",
        }
        try:
            self.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=self.name, labels=labels)))
        except client.ApiException as e:
            if e.status != 409:
                raise
            self.core.patch_node(self.name, {"metadata": {"labels": labels}})
        capacity = {
            "cpu": NOMINAL_CPU,
            "memory": NOMINAL_MEMORY,
            "pods": MAX_PODS,
            "ephemeral-storage": f"{shutil.disk_usage(self.state_dir).total // 1024}Ki",
        }
        if self.gpus:
            capacity["nvidia.com/gpu"] = str(self.gpus)
        self.core.patch_node_status(self.name, {"status": {
            "capacity": capacity, "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": LOCAL_IP}, {"type": "Hostname", "address": self.name}],
            "nodeInfo": {
                "kubeletVersion": "lora-test-node", "operatingSystem": "linux", "architecture": os.uname().machine,
            },
        }})  # fmt: skip
        self.heartbeat()
        # TaintNodesByCondition admission taints new nodes not-ready; the node lifecycle
        # controller would lift it once Ready, but it is disabled here, so lift it ourselves.
        spec = self.core.read_node(self.name).spec
        taints = (spec and spec.taints) or []
        keep = [t.to_dict() for t in taints if t.key != "node.kubernetes.io/not-ready"]
        if len(keep) != len(taints):
            self.core.patch_node(self.name, {"spec": {"taints": keep or None}})
        log.info("node %s registered (%s gpus); state dir %s", self.name, self.gpus, self.state_dir)

    def heartbeat(self) -> None:
        ts = now()
        healthy = (
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        )
        conditions = [
            {"type": t, "status": s, "reason": r, "lastHeartbeatTime": ts, "lastTransitionTime": self._since}
            for t, s, r in healthy
        ]
        self.core.patch_node_status(self.name, {"status": {"conditions": conditions}})

    # --- local-path provisioner ----------------------------------------------------------
    def provision(self) -> None:
        provisioner.provision(self.core, self.name, self.state_dir / "volumes")

    def housekeeping(self) -> None:
        """Heartbeat every HEARTBEAT_SECONDS, provision claims every second; survive API errors."""
        last_beat = time.monotonic()
        while not self.stop_event.wait(1.0):
            try:
                if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                    self.heartbeat()
                    last_beat = time.monotonic()
                self.provision()
            except Exception:
                log.exception("housekeeping failed; retrying")

    # --- pods --------------------------------------------------------------------------
    def watch_pods(self) -> None:
        """List+watch this node's pods forever, relisting after any error or watch expiry."""
        selector = f"spec.nodeName={self.name}"
        while not self.stop_event.is_set():
            try:
                listing = as_dict(
                    self.core.list_pod_for_all_namespaces(field_selector=selector, _preload_content=False)
                )
                present = {p["metadata"]["uid"] for p in listing["items"]}
                for pod in listing["items"]:
                    self.reconcile(pod, deleted=False)
                with self.lock:
                    vanished = [r for uid, r in self._runners.items() if uid not in present]
                for runner in vanished:
                    self.reconcile(runner.pod, deleted=True)
                resp: Any = self.core.list_pod_for_all_namespaces(  # a raw urllib3 response
                    field_selector=selector,
                    resource_version=listing["metadata"]["resourceVersion"],
                    allow_watch_bookmarks=False,
                    watch=True,
                    timeout_seconds=60,
                    _preload_content=False,
                    _request_timeout=90,
                )
                try:
                    for line in iter_resp_lines(resp):
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            break  # typically 410 Gone: relist
                        self.reconcile(event["object"], deleted=event["type"] == "DELETED")
                finally:
                    resp.release_conn()
            except Exception:
                if self.stop_event.is_set():
                    return
                log.exception("pod watch failed; relisting")
                time.sleep(1)

    def reconcile(self, pod: Obj, deleted: bool) -> None:
        """Drive one pod towards what its object says; never raises for a single bad pod."""
        meta = pod["metadata"]
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        try:
            self._reconcile(pod, deleted)
        except Exception:
            log.exception("pod %s: reconcile failed", key)

    def _reconcile(self, pod: Obj, deleted: bool) -> None:
        meta = pod["metadata"]
        phase = pod.get("status", {}).get("phase", "Pending")
        with self.lock:
            runner = self._runners.get(meta["uid"])
            if deleted:
                self._runners.pop(meta["uid"], None)
                if runner:
                    runner.abandon(GRACE_CAP_SECONDS)
                return
            if meta.get("deletionTimestamp"):
                if runner and runner.request_delete(meta.get("deletionGracePeriodSeconds")):
                    return
            elif runner or phase in ("Succeeded", "Failed"):
                return
            elif phase == "Pending":
                runner = PodRunner(self, pod)
                self._runners[meta["uid"]] = runner
                runner.start()
                return
        if meta.get("deletionTimestamp"):
            PodRunner(self, pod)._delete_now()  # no live process: finish the deletion now
        else:
            # Running but unknown: a previous incarnation of this node started it.
            PodRunner(self, pod)._fail("NodeRestarted", "the test node restarted; the process is gone")

    def run(self) -> None:
        """Register, then serve until stop_event; finally kill every pod process."""
        (self.state_dir / "pods").mkdir(parents=True, exist_ok=True)
        self.register()
        threading.Thread(target=self.housekeeping, name="housekeeping", daemon=True).start()
        threading.Thread(target=self.watch_pods, name="pod-watch", daemon=True).start()
        self.stop_event.wait()
        with self.lock:
            runners = list(self._runners.values())
        for runner in runners:
            runner.abandon(5.0)
        for runner in runners:
            runner.join(timeout=10)


class NodeProcess:
    """Runs `python -m tests.cluster.testnode` against a ControlPlane until the context exits.

    Attributes: name, state_dir, log_path (the agent's own log), process (Popen, once
    started). Pod processes get this interpreter's bin dir first on PATH, so console
    scripts installed next to it (e.g. ``lora-trainer``) are found.
    """

    def __init__(self, control_plane: ControlPlane, state_dir: Path, name: str = DEFAULT_NODE_NAME, gpus: int = 2):
        self.control_plane = control_plane
        self.state_dir = state_dir.resolve()
        self.name = name
        self.gpus = gpus
        self.log_path = self.state_dir / "testnode.log"
        self.process: subprocess.Popen[bytes] | None = None

    def pod_dir(self, namespace: str, pod_name: str) -> Path:
        """The newest local dir of a pod: stdout.log, stderr.log, termination-log, volumes/."""
        dirs = sorted((self.state_dir / "pods").glob(f"{namespace}_{pod_name}_*"), key=lambda p: p.stat().st_mtime)
        if not dirs:
            raise FileNotFoundError(f"no local dir for pod {namespace}/{pod_name} under {self.state_dir}")
        return dirs[-1]

    def __enter__(self) -> NodeProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = self.control_plane.env()
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
        argv = [
            sys.executable, "-m", "tests.cluster.testnode", "--kubeconfig", str(self.control_plane.kubeconfig),
            "--state-dir", str(self.state_dir), "--name", self.name, "--gpus", str(self.gpus),
        ]  # fmt: skip
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready(timeout=60)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None:
            terminate_group(self.process, grace=20)

    def restart(self) -> None:
        """Stop the agent (its pods' processes end with it) and start it again: it registers its Node anew,
        as a restarted kubelet does after its Node object was deleted."""
        self.__exit__(None, None, None)
        self.__enter__()

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        core = client.CoreV1Api(self.control_plane.api_client())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"test node exited with {self.process.returncode}:\n{log_tail(self.log_path)}")
            try:
                status = core.read_node_status(self.name).status
                conditions = (status and status.conditions) or []
                if any(c.type == "Ready" and c.status == "True" for c in conditions):
                    return
            except client.ApiException as e:
                if e.status != 404:
                    raise
            time.sleep(0.25)
        raise RuntimeError(f"node {self.name} not Ready after {timeout}s:\n{log_tail(self.log_path)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.testnode", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--name", default=DEFAULT_NODE_NAME)
    parser.add_argument("--gpus", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s")
    node = TestNode(args.kubeconfig, args.state_dir, name=args.name, gpus=args.gpus)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: node.stop_event.set())
    node.run()


if __name__ == "__main__":
    main()
