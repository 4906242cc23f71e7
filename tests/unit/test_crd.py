"""The committed CRD is generated from the pydantic models and must not drift from them."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from lora_contract import api
from lora_contract.validation import describe_validation_error
from lora_operator import builders, crd
from tests.integration.test_crd_validation import SPEC_CASES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", crd.KINDS, ids=lambda k: k.kind)
def test_committed_crd_matches_models(kind: crd.Kind) -> None:
    committed = (ROOT / "crds" / kind.file).read_text()
    assert committed == crd.render(kind), "crds/ is stale: run `python -m lora_operator.crd`"


def _walk(node, path="$"):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


@pytest.mark.parametrize("kind", crd.KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind: crd.Kind) -> None:
    schema = crd.build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "$defs" not in node, path
        assert node.get("default", 0) is not None, path
        if isinstance(node.get("exclusiveMinimum"), int | float) and not isinstance(node["exclusiveMinimum"], bool):
            raise AssertionError(f"{path}: exclusiveMinimum must be boolean in OpenAPI v3.0")


def test_printer_columns_cover_the_dashboard() -> None:
    version = crd.build_crd()["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert names == ["Phase", "Step", "Progress", "Loss", "XP", "Age"]
    assert version["subresources"] == {"status": {}}


def test_status_has_no_defaults_and_conditions_are_a_map() -> None:
    status = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert not [p for p, n in _walk(status) if "default" in n]
    assert status["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_spec_defaults_match_pydantic_defaults() -> None:
    spec = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    lora = spec["properties"]["lora"]["properties"]
    defaults = api.LoraSettings()
    assert lora["rank"]["default"] == defaults.rank
    assert lora["targetModules"]["default"] == defaults.target_modules
    assert lora["alpha"]["exclusiveMinimum"] is True
    assert yaml.safe_load(crd.render())["metadata"]["name"] == f"{api.PLURAL}.{api.GROUP}"


@pytest.mark.parametrize(("case", "manifest", "expected"), SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_the_models_reject_what_the_apiserver_rejects(case: str, manifest: dict, expected: str) -> None:
    """The same bad specs as tests/integration/test_crd_validation.py, checked in Python (the trainer CLI and
    the operator's own check): rejected, and with the same message where the CRD's is one of ours (CEL)."""
    with pytest.raises(ValidationError) as err:
        api.LoraTrainingJobSpec.model_validate(manifest["spec"])
    if not expected.startswith("spec.") and "Unsupported value" not in expected:
        assert expected in describe_validation_error(err.value), case


def test_valid_volumes_tolerations_and_labels_pass() -> None:
    spec = api.LoraTrainingJobSpec.model_validate({
        "model": {"path": "/models/m"}, "datasets": [{"path": "/data/x.jsonl"}],
        "volumes": [{"name": "models", "claimName": "m", "mountPath": "/models"},
                    {"name": "data", "claimName": "d", "mountPath": "/etc/lora-data"},
                    {"name": "scratch", "claimName": "s", "mountPath": "/tmp/scratch"}],
        "resources": {"gpuType": "NVIDIA-A100-SXM4-80GB", "tolerations": [
            {"operator": "Exists"},
            {"key": "gpu", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
            {"key": "team", "value": "ml"}]},
        "output": {"subPath": "runs/v1..2"}, "queueName": "team-a",
    })
    job = builders.job("ok", "ns", spec, builders.OperatorConfig())
    mounts = [m["mountPath"] for m in job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]]
    assert len(set(mounts)) == len(mounts)
    ours = [m for m in mounts if m not in ("/models", "/etc/lora-data", "/tmp/scratch")]
    reserved = (*api.OWN_MOUNT_PATHS, *api.READ_ONLY_MOUNT_ROOTS)
    assert all(any(m == r or m.startswith(r + "/") for r in reserved) for m in ours), ours


def test_kubectl_get_minions_shows_level_xp_runs_adapter_age() -> None:
    version = crd.build_crd(crd.MINIONS)["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")] == [
        "Level", "XP", "Runs", "Adapter", "Age"]
    names = crd.build_crd(crd.MINIONS)["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("Minion", "minions", ["mn"])
    wide = [c["name"] for c in crd.build_crd()["spec"]["versions"][0]["additionalPrinterColumns"] if c.get("priority")]
    assert "Minion" in wide
