"""The chart installed in the real control plane: its RBAC is enough for the operator, and no more.

There is no container runtime here, so the chart's Deployment is installed with ``replicas=0``
and the operator runs as a local process instead, with the Deployment's environment and a
token of the chart's ServiceAccount (TokenRequest API): every API call it makes is authorized
exactly as in the pod. Its progress endpoint listens on a local port, with the chart's Secret.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import CHART, run_helm
from tests.cluster.controlplane import ControlPlane
from tests.conftest import Kubectl, OperatorProcess, free_port, wait_for

pytestmark = pytest.mark.integration

TRAINER_REPOSITORY, TRAINER_TAG = "registry.example/lora-trainer", "chart-test"


def _ltj(name: str) -> dict:
    return {"apiVersion": "lora.airepublic.io/v1alpha1", "kind": "LoraTrainingJob", "metadata": {"name": name},
            "spec": {"model": {"hubId": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                     "datasets": [{"builtin": "minion-handbook"}],
                     "resources": {"gpu": 0, "cpu": "1", "memory": "1Gi"}, "suspend": True}}


@pytest.fixture
def make_namespace(kubectl: Kubectl) -> Iterator[Callable[[], str]]:
    created: list[str] = []

    def make() -> str:
        name = f"c-{uuid.uuid4().hex[:8]}"
        kubectl("create", "namespace", name)
        created.append(name)
        return name

    yield make
    for name in created:
        kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def install(control_plane: ControlPlane, helm: Path) -> Iterator[Callable[..., str]]:
    """``install(namespace, *helm_args)`` installs the chart; the release is uninstalled afterwards
    (its ClusterRole and ClusterRoleBinding would outlive the namespace)."""
    releases: list[tuple[str, str]] = []

    def _install(namespace: str, *args: str) -> str:
        release = f"lora-{uuid.uuid4().hex[:6]}"
        proc = run_helm(helm, "install", release, str(CHART), "-n", namespace, "--set", "replicas=0", *args,
                        env=control_plane.env())
        assert proc.returncode == 0, proc.stderr
        releases.append((release, namespace))
        assert "kubectl get loratrainingjobs" in proc.stdout  # NOTES.txt
        return release

    yield _install
    for release, namespace in releases:
        run_helm(helm, "uninstall", release, "-n", namespace, "--wait", env=control_plane.env())


def _service_account_kubeconfig(cp: ControlPlane, kubectl: Kubectl, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig that authenticates as ``namespace/sa`` with a bound token, like the pod would."""
    token = kubectl("create", "token", sa, "-n", namespace, "--duration=1h").strip()
    cluster = yaml.safe_load(cp.kubeconfig.read_text())["clusters"][0]["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": sa, "namespace": namespace}}],
    }))
    path.chmod(0o600)
    return path


def _secret_dir(kubectl: Kubectl, name: str, namespace: str, path: Path) -> Path:
    """The Secret's keys as files in ``path``, as the pod's volume would hold them."""
    path.mkdir()
    for key, value in kubectl.get("secret", name, namespace)["data"].items():
        (path / key).write_bytes(base64.b64decode(value))
    return path


def _can(kubectl: Kubectl, user: str, *args: str) -> bool:
    proc = kubectl.run("auth", "can-i", *args, f"--as={user}", check=False)
    return proc.stdout.strip() == "yes"


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_chart_rbac_runs_the_operator_and_nothing_more(
    mode: str, control_plane: ControlPlane, kubectl: Kubectl, install, make_namespace, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    system, work, other = make_namespace(), make_namespace(), make_namespace()
    scope = ["--set", f"watchNamespace={work}"] if mode == "namespaced" else []
    release = install(system, "--set", f"trainer.image.repository={TRAINER_REPOSITORY}",
                      "--set", f"trainer.image.tag={TRAINER_TAG}", *scope)
    kubectl.wait_crd_established()
    deploy = kubectl.get("deployment", f"{release}-lora-operator", system)
    assert deploy["spec"]["replicas"] == 0
    pod = deploy["spec"]["template"]["spec"]
    sa = pod["serviceAccountName"]
    for env in pod["containers"][0]["env"]:
        monkeypatch.setenv(env["name"], env["value"])
    # The process runs on this machine: the endpoint on a free local port, with the chart's generated Secret.
    tls = next(v["secret"]["secretName"] for v in pod["volumes"] if v["name"] == "progress-tls")
    port = free_port()
    monkeypatch.setenv("LORA_PROGRESS_TLS_DIR", str(_secret_dir(kubectl, tls, system, tmp_path / "tls")))
    monkeypatch.setenv("LORA_PROGRESS_PORT", str(port))
    monkeypatch.setenv("LORA_PROGRESS_URL", f"https://127.0.0.1:{port}")

    op = OperatorProcess(control_plane, tmp_path,
                         kubeconfig=_service_account_kubeconfig(control_plane, kubectl, system, sa,
                                                                tmp_path / "kubeconfig"))
    op.start()
    try:
        kubectl.apply(_ltj("rbac"), work)
        kubectl.apply(_ltj("elsewhere"), other)
        wait_for("phase Suspended", lambda: (kubectl.get("ltj", "rbac", work).get("status") or {})
                 .get("phase") == "Suspended", timeout=90)
        job = kubectl.get("job", "rbac-train", work)
        assert job["spec"]["suspend"] is True
        assert job["spec"]["template"]["spec"]["containers"][0]["image"] == f"{TRAINER_REPOSITORY}:{TRAINER_TAG}"
        for kind, name in [("serviceaccount", "rbac-trainer"), ("configmap", "rbac-spec")]:
            assert kubectl.get(kind, name, work), kind
        kubectl.events(work, "rbac", "JobCreated")
        # On restart every create conflicts and the operator reads the existing object instead ("get"): the run
        # is "in place" only once each child was read back and found to be its own, so the Role allows the get.
        op.stop()
        op.start()
        wait_for("the restarted operator to resume the run",
                 lambda: "training Job rbac-train is in place" in op.log.read_text(), timeout=60)
        log = op.log.read_text()
        assert re.search(r"serviceaccounts \S*rbac-trainer\S* already exists", log)
        assert not [line for line in re.findall(r".*Forbidden.*", log) if "because it is being terminated" not in line]
        ltj = kubectl.get("ltj", "rbac", work)
        # What docs/argocd.md promises: Kopf's state lives in annotations under the API group.
        annotations = set(ltj["metadata"]["annotations"]) - {"kubectl.kubernetes.io/last-applied-configuration"}
        assert annotations and all(k.startswith("lora.airepublic.io/") for k in annotations), annotations
        elsewhere = kubectl.get("ltj", "elsewhere", other)
        if mode == "namespaced":
            assert "status" not in elsewhere and kubectl.get("job", "elsewhere-train", other) is None
        else:
            wait_for("the other namespace's run", lambda: kubectl.get("job", "elsewhere-train", other), timeout=60)
        # Let Kopf finish (finalizers, timers) so deleting the namespaces does not hang on them.
        for namespace in (work, other):
            kubectl("delete", "ltj", "--all", "-n", namespace, "--timeout=60s")
    finally:
        op.stop()
        log = "".join(p.read_text() for p in sorted(tmp_path.glob("operator-*.log")))
        print("--- operator logs ---\n" + "\n".join(log.splitlines()[-60:]))
    # Kopf (aiohttp) says Forbidden or "Not enough permissions"; the kubernetes client logs the 403.
    # A cluster-wide operator also sees other tests' leftovers in terminating namespaces: not RBAC.
    denials = re.findall(r".*(?:Forbidden|\" 403 |Not enough permissions).*", log)
    assert not [line for line in denials if "because it is being terminated" not in line]

    user = f"system:serviceaccount:{system}:{sa}"
    denied = [("get", "secrets", "-n", work), ("delete", "secrets", "-n", work), ("create", "pods", "-n", work),
              ("delete", "pods", "-n", work), ("delete", "loratrainingjobs", "-n", work),
              ("create", "minions", "-n", work), ("delete", "minions", "-n", work), ("patch", "minions", "-n", work),
              ("update", "loratrainingjobs", "-n", work), ("escalate", "roles", "-n", work),
              ("create", "roles", "-n", work), ("create", "rolebindings", "-n", work),
              ("bind", "clusterroles"), ("create", "clusterrolebindings"), ("get", "nodes")]
    if mode == "namespaced":
        denied += [("create", "jobs", "-n", other), ("list", "loratrainingjobs", "-A"),
                   ("patch", "loratrainingjobs", "-n", other)]
    assert not [d for d in denied if _can(kubectl, user, *d)], "the operator may do more than it needs"
    assert _can(kubectl, user, "patch", "loratrainingjobs", "--subresource=status", "-n", work)
    assert _can(kubectl, user, "update", "minions", "--subresource=status", "-n", work)
    assert _can(kubectl, user, "delete", "jobs", "-n", work)  # a group restart (docs/trainer.md)
    assert _can(kubectl, user, "get", "pods", "-n", work) and _can(kubectl, user, "create", "tokenreviews")


def test_upgrade_keeps_the_generated_tls_secret(
    control_plane: ControlPlane, kubectl: Kubectl, helm: Path, install, make_namespace,
) -> None:
    """Running trainers trust the CA they started with: an upgrade must not generate a new one."""
    namespace = make_namespace()
    release = install(namespace)

    def tls() -> tuple[dict, str]:
        deploy = kubectl.get("deployment", f"{release}-lora-operator", namespace)
        secret = kubectl.get("secret", f"{release}-lora-operator-progress-tls", namespace)
        return secret["data"], deploy["spec"]["template"]["metadata"]["annotations"]["checksum/progress-tls"]

    before = tls()
    proc = run_helm(helm, "upgrade", release, str(CHART), "-n", namespace, "--reuse-values",
                    "--set", "statusWrites.perSecond=5", env=control_plane.env())
    assert proc.returncode == 0, proc.stderr
    assert tls() == before
