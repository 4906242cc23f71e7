"""The Helm chart rendered without a cluster: CRD copy, lint, Deployment, RBAC, values and schema."""

from __future__ import annotations

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
    _rule("batch", "jobs", "get list watch create patch"),
    _rule("", "pods", "list watch"),
    _rule("", "serviceaccounts configmaps", "get create"),
    _rule("rbac.authorization.k8s.io", "roles rolebindings", "get create"),
    _rule("", "events", "create"),
]
CRD_RULE = _rule("apiextensions.k8s.io", "customresourcedefinitions", "list watch")
NAMESPACES_RULE = _rule("", "namespaces", "list watch")


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), kinds
    return {d["kind"]: d for d in docs}


def _env(deployment: dict) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def test_chart_crd_is_the_generated_crd() -> None:
    chart_copy = CHART / "crds" / crd.CRD_FILE
    assert chart_copy.read_text() == (ROOT / "crds" / crd.CRD_FILE).read_text(), (
        f"the chart's CRD is stale: cp crds/{crd.CRD_FILE} {chart_copy.relative_to(ROOT)}")
    assert [p.name for p in (CHART / "crds").iterdir()] == [crd.CRD_FILE]


@pytest.mark.parametrize("values", [[], ["--set", "watchNamespace=team-a"]], ids=["cluster-wide", "namespaced"])
def test_helm_lint(helm: Path, values: list[str]) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), *values)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_render_is_a_single_cluster_wide_operator(render: Render) -> None:
    objs = _by_kind(render())
    assert set(objs) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"}
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
    assert container["ports"] == [{"name": "healthz", "containerPort": 8080}]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # The chart's trainer defaults are the operator's own, and nothing limits the namespaces.
    assert builders.OperatorConfig.from_env(_env(deploy)) == builders.OperatorConfig()
    assert "WATCH_NAMESPACE" not in _env(deploy)
    assert objs["ClusterRole"]["rules"] == [*NAMESPACED_RULES, CRD_RULE]
    binding = objs["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == objs["ClusterRole"]["metadata"]["name"] == "lora-system-demo-lora-operator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-lora-operator",
                                    "namespace": "lora-system"}]


def test_operator_holds_what_it_grants_to_each_trainer() -> None:
    """RBAC escalation prevention: the per-run Role may only grant what the operator holds."""
    for granted in builders.status_role("run")["rules"]:
        assert any(set(granted["apiGroups"]) <= set(r["apiGroups"]) and set(granted["resources"]) <= set(r["resources"])
                   and set(granted["verbs"]) <= set(r["verbs"]) for r in NAMESPACED_RULES), granted


def test_values_reach_the_operator_config(render: Render, tmp_path: Path) -> None:
    tolerations = [{"key": "team", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]
    values = {
        "image": {"repository": "registry.local/operator", "tag": "v1", "pullPolicy": "Never"},
        # A UID of 7 digits: Helm reads YAML numbers as floats, which print as 2e+06 unless cast.
        "trainer": {"image": {"repository": "registry.local/trainer", "tag": "v9", "pullPolicy": "Always"},
                    "nodeSelector": {"pool": "gpu"}, "tolerations": tolerations, "runAsUser": 2000000,
                    "imagePullSecrets": ["regcred"], "serviceAccountAnnotations": {"example.com/role": "trainer"}},
        "syncIntervalSeconds": 7,
        "verbose": True,
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    deploy = _by_kind(render("-f", str(tmp_path / "values.yaml")))["Deployment"]
    env = _env(deploy)
    assert builders.OperatorConfig.from_env(env) == builders.OperatorConfig(
        trainer_image="registry.local/trainer:v9", image_pull_policy="Always", node_selector={"pool": "gpu"},
        tolerations=tolerations, run_as_user=2000000, image_pull_secrets=["regcred"],
        service_account_annotations={"example.com/role": "trainer"})
    assert env["LORA_SYNC_INTERVAL_SECONDS"] == "7"
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.local/operator:v1" and container["imagePullPolicy"] == "Never"
    assert container["args"][-1] == "--verbose"


def test_watch_namespace_narrows_rbac_to_a_role_there(render: Render) -> None:
    objs = _by_kind(render("--set", "watchNamespace=team-a"))
    assert set(objs) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment"}
    assert objs["Role"]["metadata"]["namespace"] == objs["RoleBinding"]["metadata"]["namespace"] == "team-a"
    assert objs["Role"]["rules"] == NAMESPACED_RULES
    # Cluster-wide, only what Kopf reads to find the namespace and the CRD.
    assert objs["ClusterRole"]["rules"] == [CRD_RULE, NAMESPACES_RULE]
    assert objs["RoleBinding"]["subjects"][0]["namespace"] == "lora-system"
    assert objs["ServiceAccount"]["metadata"]["namespace"] == "lora-system"
    assert _env(objs["Deployment"])["WATCH_NAMESPACE"] == "team-a"


@pytest.mark.parametrize("bad, error", [
    ("replicas=2", "/replicas"),
    ("trainer.runAsUser=0", "/trainer/runAsUser"),
    ("trainer.image.pullPolicy=Sometimes", "/trainer/image/pullPolicy"),
    ("watchNamespace=Team_A", "/watchNamespace"),
    ("trainer.gpu=1", "additional properties 'gpu'"),
])
def test_schema_rejects_bad_values(helm: Path, bad: str, error: str) -> None:
    proc = run_helm(helm, "template", "demo", str(CHART), "--set", bad)
    assert proc.returncode != 0 and "values don't meet the specifications of the schema" in proc.stderr
    assert error in proc.stderr
