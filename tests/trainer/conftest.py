"""Fixtures of the trainer tests: a tiny Llama built once per session and small specs around it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from lora_contract.api import LoraTrainingJobSpec
from lora_trainer.sources import builtin_path
from tests.trainer.tiny import build_tiny_model

HANDBOOK = builtin_path("minion-handbook")


def handbook_rows() -> list[dict[str, str]]:
    return [json.loads(line) for line in HANDBOOK.read_text().splitlines()]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [" ".join(row.values()) for row in handbook_rows()]
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), texts)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: Path) -> Any:
    from lora_contract.api import ModelSpec
    from lora_trainer.modeling import load_tokenizer

    return load_tokenizer(ModelSpec(path=str(tiny_model)))[0]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_spec_dict(model: Path, **sections: Any) -> dict[str, Any]:
    """A spec that runs the whole pipeline on the tiny model in a few seconds; ``sections`` override."""
    base = {
        "model": {"path": str(model)},
        "datasets": [{"builtin": "minion-handbook"}],
        "data": {"maxItems": 60, "validationFraction": 0.1},
        "lora": {"maxSteps": 4, "batchSize": 4, "gradientAccumulationSteps": 1, "maxLength": 96,
                 "loggingSteps": 1, "saveSteps": 2, "evalSteps": 2, "learningRate": 0.003},
        "evaluation": {"heldOutItems": 3, "generation": {"maxNewTokens": 8},
                       "queries": [{"query": "What is a minion?", "expectedKeywords": ["minion", "Ledger"]}]},
        "resources": {"gpu": 0},
    }
    return _merge(base, sections)


def tiny_spec(model: Path, **sections: Any) -> LoraTrainingJobSpec:
    return LoraTrainingJobSpec.model_validate(tiny_spec_dict(model, **sections))
