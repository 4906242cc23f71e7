"""Every example parses against the API, and the Kubernetes quickstart trains what the local one does."""

from pathlib import Path

import pytest
import yaml

from lora_contract import api

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _resources(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == api.KIND]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_is_a_valid_spec(path: Path) -> None:
    docs = _resources(path) or [{"spec": yaml.safe_load(path.read_text())}]
    for doc in docs:
        api.LoraTrainingJobSpec.model_validate(doc["spec"])


def test_quickstart_matches_the_local_quickstart() -> None:
    k8s = _resources(EXAMPLES / "quickstart.yaml")[0]["spec"]
    local = yaml.safe_load((EXAMPLES / "quickstart-local.yaml").read_text())
    for key in ("model", "datasets", "data", "lora", "evaluation"):
        assert k8s[key] == local[key], key


def test_the_demo_runs_the_readme_real_cluster_section_verbatim() -> None:
    root = EXAMPLES.parent
    readme = (root / "README.md").read_text()
    install = readme[readme.index("## On a real cluster"):].split("```bash\n")[2].split("```")[0]
    demo = (root / "scripts" / "demo.sh").read_text().splitlines()
    assert "REGISTRY=localhost" in demo
    for line in install.splitlines():  # the watch runs in the background there, until the run ends
        assert line in demo or f"{line} &" in demo, line
