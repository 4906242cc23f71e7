"""The Helm chart rendered without a cluster: CRD copy, lint, Deployment, RBAC, progress endpoint, values and
schema."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ssl
import subprocess
from pathlib import Path

import pytest
import yaml

from lora_operator import builders, crd
from tests.chart.conftest import CHART, Render, run_helm

ROOT = Path(__file__).resolve().parents[2]


def _rule(group: str, resources: str, verbs: str) -> dict:
    return {"apiGroups": [group], "resources": resources.split(), "verbs": verbs.split()}


# The operator's permissions, as docs/operations.md explains them one by one.
NAMESPACED_RULES = [
    _rule("lora.airepublic.io", "loratrainingjobs", "get list watch patch"),
    _rule("lora.airepublic.io", "loratrainingjobs/status", "get patch"),
    _rule("lora.airepublic.io", "loratrainingjobs/finalizers", "update"),
    _rule("lora.airepublic.io", "minions", "get list watch"),
    _rule("lora.airepublic.io", "minions/status", "update"),
    _rule("batch", "jobs", "get list watch create patch delete"),
    _rule("", "pods", "get list watch"),
    _rule("", "serviceaccounts configmaps services", "get create"),
    _rule("", "events", "create"),
]
CRD_RULE = _rule("apiextensions.k8s.io", "customresourcedefinitions", "list watch")
NAMESPACES_RULE = _rule("", "namespaces", "list watch")
TOKENREVIEW_RULE = _rule("authentication.k8s.io", "tokenreviews", "create")
PROGRESS = "demo-lora-operator-progress"
PROGRESS_DNS_NAMES = [PROGRESS, f"{PROGRESS}.lora-system", f"{PROGRESS}.lora-system.svc",
                      f"{PROGRESS}.lora-system.svc.cluster.local"]


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), kinds
    return {d["kind"]: d for d in docs}


def _env(deployment: dict) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def _tls_secret_name(deployment: dict) -> str:
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "progress-tls", "mountPath": "/etc/lora-operator/tls", "readOnly": True} in (
        pod["containers"][0]["volumeMounts"])
    assert _env(deployment)["LORA_PROGRESS_TLS_DIR"] == "/etc/lora-operator/tls"
    return next(v["secret"]["secretName"] for v in pod["volumes"] if v["name"] == "progress-tls")


def test_chart_crd_is_the_generated_crd() -> None:
    for kind in crd.KINDS:
        chart_copy = CHART / "crds" / kind.file
        assert chart_copy.read_text() == (ROOT / "crds" / kind.file).read_text(), (
            f"the chart's CRD is stale: cp crds/{kind.file} {chart_copy.relative_to(ROOT)}")
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(kind.file for kind in crd.KINDS)


@pytest.mark.parametrize("values", [[], ["--set", "watchNamespace=team-a"]], ids=["cluster-wide", "namespaced"])
def test_helm_lint(helm: Path, values: list[str]) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), *values)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_render_is_a_single_cluster_wide_operator(render: Render) -> None:
    objs = _by_kind(render())
    assert set(objs) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "Secret"}
    deploy = objs["Deployment"]
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == objs["ServiceAccount"]["metadata"]["name"] == "demo-lora-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["command"] == ["lora-operator"]
    assert container["args"] == ["--liveness=http://0.0.0.0:8080/healthz"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["ports"] == [{"name": "healthz", "containerPort": 8080},
                                  {"name": "progress", "containerPort": 8443}]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # The chart's trainer defaults are the operator's own, and nothing limits the namespaces.
    default = builders.OperatorConfig()
    assert builders.OperatorConfig.from_env(_env(deploy)) == dataclasses.replace(
        default, progress_url=f"https://{PROGRESS}.lora-system.svc:8443", trusted_images=(default.trainer_image,))
    assert "WATCH_NAMESPACE" not in _env(deploy)
    assert {k: v for k, v in _env(deploy).items() if k.startswith(("LORA_PROGRESS_", "LORA_STATUS_"))} == {
        "LORA_PROGRESS_PORT": "8443", "LORA_PROGRESS_URL": f"https://{PROGRESS}.lora-system.svc:8443",
        "LORA_PROGRESS_TLS_DIR": "/etc/lora-operator/tls", "LORA_STATUS_WRITES_PER_SECOND": "20",
        "LORA_STATUS_RUN_INTERVAL_SECONDS": "5"}
    assert objs["ClusterRole"]["rules"] == [*NAMESPACED_RULES, CRD_RULE, TOKENREVIEW_RULE]
    binding = objs["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == objs["ClusterRole"]["metadata"]["name"] == "lora-system-demo-lora-operator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-lora-operator",
                                    "namespace": "lora-system"}]


def test_progress_service_reaches_the_operator_pod(render: Render) -> None:
    objs = _by_kind(render("--set", "progress.port=9443"))
    service, deploy = objs["Service"], objs["Deployment"]
    assert service["metadata"] == {**service["metadata"], "name": PROGRESS, "namespace": "lora-system"}
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "progress", "protocol": "TCP", "port": 9443, "targetPort": "progress"}]
    assert {"name": "progress", "containerPort": 9443} in deploy["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert _env(deploy)["LORA_PROGRESS_URL"] == f"https://{PROGRESS}.lora-system.svc:9443"


def test_generated_tls_secret_serves_the_service_names(render: Render, tmp_path: Path) -> None:
    objs = _by_kind(render())
    secret, deploy = objs["Secret"], objs["Deployment"]
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert secret["metadata"]["name"] == _tls_secret_name(deploy) == f"{PROGRESS}-tls"
    for key, value in secret["data"].items():
        (tmp_path / key).write_bytes(base64.b64decode(value))
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    verify = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "ca.crt", tmp_path / "tls.crt"],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    san = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", tmp_path / "tls.crt"],
                         capture_output=True, text=True, check=True).stdout
    assert sorted(san.split("\n", 1)[1].strip().split(", ")) == sorted(f"DNS:{n}" for n in PROGRESS_DNS_NAMES)
    # The pod restarts when the Secret changes: the checksum is of the very keys rendered (not of fresh ones).
    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/progress-tls"] == hashlib.sha256(
        "\n".join(f"{k}: {v}" for k, v in sorted(secret["data"].items())).encode()).hexdigest()


def test_cert_manager_issues_the_tls_secret(render: Render) -> None:
    docs = render("--set", "progress.tls.certManager.enabled=true", "--set", "podAnnotations.team=ml")
    cm = {(d["kind"], d["metadata"]["name"]): d["spec"] for d in docs if d["apiVersion"] == "cert-manager.io/v1"}
    assert set(cm) == {("Issuer", f"{PROGRESS}-selfsigned"), ("Certificate", f"{PROGRESS}-ca"),
                       ("Issuer", f"{PROGRESS}-ca"), ("Certificate", PROGRESS)}
    assert "Secret" not in [d["kind"] for d in docs]
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    serving = cm["Certificate", PROGRESS]
    assert serving["secretName"] == _tls_secret_name(deploy) == f"{PROGRESS}-tls"
    assert serving["dnsNames"] == PROGRESS_DNS_NAMES
    # The chain: serving Certificate <- CA Issuer <- the CA Certificate's Secret <- self-signed Issuer.
    assert serving["issuerRef"] == {"kind": "Issuer", "name": f"{PROGRESS}-ca"}
    ca = cm["Certificate", f"{PROGRESS}-ca"]
    assert ca["isCA"] is True and cm["Issuer", f"{PROGRESS}-ca"] == {"ca": {"secretName": ca["secretName"]}}
    assert ca["issuerRef"] == {"kind": "Issuer", "name": f"{PROGRESS}-selfsigned"}
    assert cm["Issuer", f"{PROGRESS}-selfsigned"] == {"selfSigned": {}}
    assert deploy["spec"]["template"]["metadata"]["annotations"] == {"team": "ml"}


def test_existing_tls_secret_renders_none(render: Render) -> None:
    docs = render("--set", "progress.tls.existingSecret=my-tls", "--set", "progress.tls.certManager.enabled=true")
    assert not [d for d in docs if d["kind"] == "Secret" or d["apiVersion"] == "cert-manager.io/v1"]
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    assert _tls_secret_name(deploy) == "my-tls"
    assert "annotations" not in deploy["spec"]["template"]["metadata"]


def test_values_reach_the_operator_config(render: Render, tmp_path: Path) -> None:
    tolerations = [{"key": "team", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]
    values = {
        "image": {"repository": "registry.local/operator", "tag": "v1", "pullPolicy": "Never"},
        # A UID of 7 digits: Helm reads YAML numbers as floats, which print as 2e+06 unless cast.
        "trainer": {"image": {"repository": "registry.local/trainer", "tag": "v9", "pullPolicy": "Always"},
                    "nodeSelector": {"pool": "gpu"}, "tolerations": tolerations, "runAsUser": 2000000,
                    "gpuRuntimeClassName": "nvidia",
                    "imagePullSecrets": ["regcred"], "serviceAccountAnnotations": {"example.com/role": "trainer"},
                    "trustedImages": ["registry.local/trainer:dev"]},
        "progress": {"port": 9443},
        "statusWrites": {"perSecond": 2.5, "runIntervalSeconds": 10},
        "syncIntervalSeconds": 7,
        "verbose": True,
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    deploy = _by_kind(render("-f", str(tmp_path / "values.yaml")))["Deployment"]
    env = _env(deploy)
    assert builders.OperatorConfig.from_env(env) == builders.OperatorConfig(
        trainer_image="registry.local/trainer:v9", image_pull_policy="Always", node_selector={"pool": "gpu"},
        tolerations=tolerations, gpu_runtime_class="nvidia", run_as_user=2000000, image_pull_secrets=["regcred"],
        service_account_annotations={"example.com/role": "trainer"},
        progress_url=f"https://{PROGRESS}.lora-system.svc:9443",
        trusted_images=("registry.local/trainer:v9", "registry.local/trainer:dev"))
    assert env["LORA_SYNC_INTERVAL_SECONDS"] == "7" and env["LORA_PROGRESS_PORT"] == "9443"
    assert env["LORA_STATUS_WRITES_PER_SECOND"] == "2.5" and env["LORA_STATUS_RUN_INTERVAL_SECONDS"] == "10"
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.local/operator:v1" and container["imagePullPolicy"] == "Never"
    assert container["args"][-1] == "--verbose"


def test_watch_namespace_narrows_rbac_to_a_role_there(render: Render) -> None:
    objs = _by_kind(render("--set", "watchNamespace=team-a"))
    assert set(objs) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment",
                         "Service", "Secret"}
    assert objs["Role"]["metadata"]["namespace"] == objs["RoleBinding"]["metadata"]["namespace"] == "team-a"
    assert objs["Role"]["rules"] == NAMESPACED_RULES
    # Cluster-wide, only what Kopf reads to find the namespace and the CRD, and the TokenReviews (cluster-scoped).
    assert objs["ClusterRole"]["rules"] == [CRD_RULE, TOKENREVIEW_RULE, NAMESPACES_RULE]
    assert objs["Service"]["metadata"]["namespace"] == objs["Secret"]["metadata"]["namespace"] == "lora-system"
    assert objs["RoleBinding"]["subjects"][0]["namespace"] == "lora-system"
    assert objs["ServiceAccount"]["metadata"]["namespace"] == "lora-system"
    assert _env(objs["Deployment"])["WATCH_NAMESPACE"] == "team-a"


@pytest.mark.parametrize("bad, error", [
    ("replicas=2", "/replicas"),
    ("trainer.runAsUser=0", "/trainer/runAsUser"),
    ("trainer.image.pullPolicy=Sometimes", "/trainer/image/pullPolicy"),
    ("watchNamespace=Team_A", "/watchNamespace"),
    ("trainer.gpu=1", "additional properties 'gpu'"),
    ("progress.port=8080", "/progress/port"),
    ("progress.port=70000", "/progress/port"),
    ("progress.tls.certManager.enabled=yes", "/progress/tls/certManager/enabled"),
    ("statusWrites.perSecond=0", "/statusWrites/perSecond"),
    ("statusWrites.runIntervalSeconds=-1", "/statusWrites/runIntervalSeconds"),
    ("trainer.trustedImages[0]=", "/trainer/trustedImages/0"),
])
def test_schema_rejects_bad_values(helm: Path, bad: str, error: str) -> None:
    proc = run_helm(helm, "template", "demo", str(CHART), "--set", bad)
    assert proc.returncode != 0 and "values don't meet the specifications of the schema" in proc.stderr
    assert error in proc.stderr
