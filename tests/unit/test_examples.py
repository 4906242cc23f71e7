"""Every example parses against the API, and the Kubernetes quickstart trains what the local one does."""

from pathlib import Path

import pytest
import yaml

from lora_contract import api

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _resources(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == api.KIND]


def _specs() -> list[Path]:
    """The examples that train: LoraTrainingJob manifests and bare specs, not the serving manifests (every
    document of those has a ``kind`` of its own)."""
    def other_kinds_only(path: Path) -> bool:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        return all("kind" in d for d in docs) and not _resources(path)
    return [p for p in sorted(EXAMPLES.glob("*.yaml")) if not other_kinds_only(p)]


def test_the_serving_examples_are_told_apart_from_the_runs() -> None:
    assert {p.name for p in EXAMPLES.glob("*.yaml")} - {p.name for p in _specs()} == {
        "serving-kserve.yaml", "serving-vllm.yaml"}


@pytest.mark.parametrize("path", _specs(), ids=lambda p: p.name)
def test_example_is_a_valid_spec(path: Path) -> None:
    docs = _resources(path) or [{"spec": yaml.safe_load(path.read_text())}]
    for doc in docs:
        api.LoraTrainingJobSpec.model_validate(doc["spec"])


def test_quickstart_matches_the_local_quickstart() -> None:
    k8s = _resources(EXAMPLES / "quickstart.yaml")[0]["spec"]
    local = yaml.safe_load((EXAMPLES / "quickstart-local.yaml").read_text())
    for key in ("model", "datasets", "data", "lora", "evaluation"):
        assert k8s[key] == local[key], key
    minion = next(d for d in yaml.safe_load_all((EXAMPLES / "quickstart.yaml").read_text()) if d["kind"] == "Minion")
    assert minion["metadata"]["name"] == k8s["minion"] and minion["spec"]["model"] == k8s["model"]


def test_the_demo_runs_the_readme_real_cluster_section_verbatim() -> None:
    root = EXAMPLES.parent
    readme = (root / "README.md").read_text()
    install = readme[readme.index("## On a real cluster"):].split("```bash\n")[2].split("```")[0]
    demo = (root / "scripts" / "demo.sh").read_text().splitlines()
    # REGISTRY is the real node's registry, where build_images.sh pushed both images (the README's push step).
    assert any(line.startswith("REGISTRY=") and "# REGISTRY=" in line for line in demo)
    for line in install.splitlines():  # the watch runs in the background there, until the run ends
        assert line in demo or f"{line} &" in demo, line
