"""The CRD, installed in a real kube-apiserver, accepts good specs and rejects bad ones clearly."""

from __future__ import annotations

import copy

import pytest
import yaml

pytestmark = pytest.mark.integration

VALID = {
    "apiVersion": "lora.airepublic.io/v1alpha1",
    "kind": "LoraTrainingJob",
    "metadata": {"name": "valid"},
    "spec": {
        "model": {"hubId": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "datasets": [{"inline": [{"instruction": "Say hi", "output": "Hi!"}]}],
    },
}

def _with(path: str, value, name: str = "bad") -> dict:
    manifest = copy.deepcopy(VALID)
    manifest["metadata"]["name"] = name
    node = manifest
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return manifest


def _without(path: str) -> dict:
    manifest = _with(path, None)
    *parents, leaf = path.split(".")
    node = manifest
    for key in parents:
        node = node[key]
    del node[leaf]
    return manifest

BAD_SPECS = [
    ("two model sources", _with("spec.model", {"hubId": "a/b", "path": "/models/x"}),
     "model: set exactly one of hubId, path or package"),
    ("no model source", _with("spec.model", {"quantization": "4bit"}),
     "model: set exactly one of hubId, path or package"),
    ("rank out of range", _with("spec.lora", {"rank": 0}), "spec.lora.rank"),
    ("alpha not positive", _with("spec.lora", {"alpha": 0}), "spec.lora.alpha"),
    ("no datasets", _with("spec.datasets", []), "spec.datasets"),
    ("dataset without a source", _with("spec.datasets", [{"format": "alpaca"}]),
     "dataset: set exactly one of inline, configMap, path, url, hubId or builtin"),
    ("unknown quantization", _with("spec.model", {"hubId": "a/b", "quantization": "3bit"}),
     'Unsupported value: "3bit"'),
    ("fp16 and bf16", _with("spec.lora", {"fp16": True, "bf16": True}), "fp16 and bf16 are mutually exclusive"),
    ("all-linear mixed", _with("spec.lora", {"targetModules": ["all-linear", "q_proj"]}),
     "'all-linear' cannot be combined"),
    ("judge without endpoint", _with("spec.evaluation", {"grader": {"type": "llmJudge"}}),
     "llmJudge needs endpoint and model"),
    ("relative dataset path", _with("spec.datasets", [{"path": "data.jsonl"}]), "spec.datasets[0].path"),
    ("configMap key with a slash", _with("spec.datasets", [{"configMap": {"name": "d", "key": "../x"}}]),
     "spec.datasets[0].configMap.key"),
    ("toleration without a key", _with("spec.resources", {"tolerations": [{"effect": "NoSchedule"}]}),
     "tolerations: a toleration without a key must use operator Exists"),
    ("Exists toleration with a value", _with("spec.resources", {"tolerations": [
        {"key": "gpu", "operator": "Exists", "value": "yes"}]}), "tolerations: operator Exists takes no value"),
    ("tolerationSeconds without NoExecute", _with("spec.resources", {"tolerations": [
        {"key": "gpu", "value": "a", "tolerationSeconds": 30}]}), "tolerationSeconds needs effect NoExecute"),
    ("gpuType not a label value", _with("spec.resources", {"gpuType": "NVIDIA A100"}), "spec.resources.gpuType"),
    ("queueName too long for a label", _with("spec.queueName", "q" * 64), "spec.queueName"),
    ("volume over the output mount", _with("spec.volumes", [{"name": "m", "claimName": "c", "mountPath": "/output"}]),
     "the trainer's own mounts"),
    ("volume inside the spec mount", _with("spec.volumes", [{"name": "m", "claimName": "c",
                                                              "mountPath": "/etc/lora/spec/x"}]),
     "the trainer's own mounts"),
    ("two volumes at one path", _with("spec.volumes", [{"name": "a", "claimName": "c", "mountPath": "/models"},
                                                       {"name": "b", "claimName": "d", "mountPath": "/models"}]),
     "volumes: names and mountPaths must be unique"),
    ("output subPath escaping the volume", _with("spec.output", {"subPath": "runs/../../tmp"}),
     "output: subPath must not contain '..' segments"),
    ("a destination that is not s3://", _with("spec.output", {"destinations": [{"uri": "gs://bucket/x"}]}),
     "spec.output.destinations[0].uri"),
    ("a destination prefix with '..'", _with("spec.output", {"destinations": [{"uri": "s3://bucket/a/../b"}]}),
     "destinations: an s3:// uri's prefix must not contain '.' or '..' segments"),
    ("two destinations with one uri", _with("spec.output", {"destinations": [{"uri": "s3://bucket/a"},
                                                                              {"uri": "s3://bucket/a"}]}),
     "output: destinations must have distinct uris"),
    ("an oci destination without a tag", _with("spec.output", {"destinations": [{"uri": "oci://ghcr.io/org/x"}]}),
     "spec.output.destinations[0].uri"),
    ("an endpoint on an oci destination", _with("spec.output", {"destinations": [
        {"uri": "oci://ghcr.io/org/x:v1", "endpoint": "http://minio:9000"}]}),
     "destinations: endpoint is for s3:// and hf:// destinations, region for s3:// only"),
    ("a region on an hf destination", _with("spec.output", {"destinations": [
        {"uri": "hf://team-a/adapter", "region": "eu-west-1"}]}),
     "destinations: endpoint is for s3:// and hf:// destinations, region for s3:// only"),
    ("an hf destination without an owner", _with("spec.output", {"destinations": [{"uri": "hf://adapter"}]}),
     "spec.output.destinations[0].uri"),
    ("plainHttp on an s3 destination", _with("spec.output", {"destinations": [
        {"uri": "s3://bucket/x", "plainHttp": True}]}), "destinations: plainHttp is for oci:// destinations"),
    ("a destination endpoint without a scheme", _with("spec.output", {"destinations": [
        {"uri": "s3://bucket/a", "endpoint": "minio.storage:9000"}]}), "spec.output.destinations[0].endpoint"),
    ("several pods without a shared volume", _with("spec.resources", {"nodes": 2}),
     "resources.nodes > 1 needs output.claimName"),
    ("no model and no minion", _without("spec.model"), "model is required unless minion names a Minion"),
    ("a minion name that is not a DNS name", _with("spec.minion", "Ana Smith"), "spec.minion"),
    ("name too long", _with("spec.suspend", False, name="x" * 60), "metadata.name must be at most 56"),
]
SPEC_CASES = [c for c in BAD_SPECS if c[0] != "name too long"]

def test_valid_spec_is_accepted_with_defaults(kubectl, crds, module_namespace) -> None:
    kubectl.apply(VALID, module_namespace)
    obj = kubectl.get("loratrainingjob", "valid", module_namespace)
    assert obj["spec"]["lora"]["rank"] == 8
    assert obj["spec"]["lora"]["targetModules"] == ["q_proj", "v_proj"]
    assert obj["spec"]["resources"]["gpu"] == 1
    assert obj["spec"]["data"]["validationFraction"] == 0.1

@pytest.mark.parametrize(("case", "manifest", "expected"), BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_invalid_spec_is_rejected_with_a_clear_message(
    kubectl, crds, module_namespace, case, manifest, expected
) -> None:
    proc = kubectl.run("apply", "-n", module_namespace, "-f", "-", input=yaml.safe_dump(manifest), check=False)
    assert proc.returncode != 0, f"{case}: accepted"
    assert expected in proc.stderr, f"{case}: {proc.stderr}"
    assert kubectl.get("loratrainingjob", manifest["metadata"]["name"], module_namespace) is None

def test_unknown_fields_are_rejected(kubectl, crds, module_namespace) -> None:

    manifest = _with("spec.lora", {"rnak": 8})
    proc = kubectl.run("apply", "-n", module_namespace, "-f", "-", input=yaml.safe_dump(manifest), check=False)
    assert proc.returncode != 0 and 'unknown field "spec.lora.rnak"' in proc.stderr, proc.stderr


MINION = {"apiVersion": "lora.airepublic.io/v1alpha1", "kind": "Minion", "metadata": {"name": "ana"},
          "spec": {"displayName": "Ana", "model": {"hubId": "HuggingFaceTB/SmolLM2-135M-Instruct"}}}
BAD_MINIONS = [
    ("no model", {"displayName": "Ana"}, "spec.model: Required value"),
    ("two model sources", {"model": {"hubId": "a/b", "path": "/m"}},
     "model: set exactly one of hubId, path or package"),
    ("levels not increasing", {"model": {"hubId": "a/b"}, "levels": [800, 800, 2400]},
     "levels: XP thresholds must be positive and strictly increasing"),
    ("a level at 0 XP", {"model": {"hubId": "a/b"}, "levels": [0, 100]}, "spec.levels[0]"),
    ("bad inherited lora settings", {"model": {"hubId": "a/b"}, "lora": {"rank": 0}}, "spec.lora.rank"),
    ("display name too long", {"model": {"hubId": "a/b"}, "displayName": "x" * 64}, "spec.displayName"),
]


def test_a_minion_gets_the_default_level_table(kubectl, crds, module_namespace) -> None:
    kubectl.apply(MINION, module_namespace)
    obj = kubectl.get("minion", "ana", module_namespace)
    assert obj["spec"]["levels"][:3] == [800, 2400, 4800]
    assert "ana" in kubectl("get", "mn", "-n", module_namespace)


@pytest.mark.parametrize(("case", "spec", "expected"), BAD_MINIONS, ids=[c[0] for c in BAD_MINIONS])
def test_a_bad_minion_is_rejected_with_a_clear_message(kubectl, crds, module_namespace, case, spec, expected) -> None:
    manifest = {**MINION, "metadata": {"name": "bad-minion"}, "spec": spec}
    proc = kubectl.run("apply", "-n", module_namespace, "-f", "-", input=yaml.safe_dump(manifest), check=False)
    assert proc.returncode != 0, f"{case}: accepted"
    assert expected in proc.stderr, f"{case}: {proc.stderr}"
