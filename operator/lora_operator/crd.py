"""Generate the CustomResourceDefinition from the pydantic models in ``api``.

Pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 schema:
no ``$ref``, no ``anyOf: [X, null]`` for optional fields, ``exclusiveMinimum`` as a
boolean, ``x-kubernetes-preserve-unknown-fields`` for free-form objects. This module does
that conversion, so ``crds/`` is never edited by hand: ``python -m lora_operator.crd``
rewrites it and ``tests/unit/test_crd.py`` fails when the committed file drifts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from lora_contract import api
from lora_operator import builders

CRD_FILE = f"{api.GROUP}_{api.PLURAL}.yaml"

_DROP = {"title", "examples"}


def _convert(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_convert(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(merged, defs)
    any_of = node.get("anyOf")
    if any_of is not None:
        non_null = [s for s in any_of if s.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"unsupported union in schema: {any_of}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return _convert({**non_null[0], **rest}, defs)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and value is None):
            continue
        if key == "properties":
            required = set(node.get("required", []))
            out[key] = {}
            for name, sub in value.items():
                out[key][name] = _convert(sub, defs)
                # A non-optional nested model with a default factory: default it to {} so the
                # apiserver fills in its leaf defaults and `kubectl get -o yaml` shows them.
                if set(sub) == {"$ref"} and name not in required:
                    out[key][name]["default"] = {}
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif value is not False:
                out[key] = _convert(value, defs)
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = _convert(value, defs)
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def openapi_schema(model: type[api.BaseModel]) -> dict[str, Any]:
    """Structural OpenAPI v3 schema of a model, as camelCase wire names."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert(raw, defs)


def _status_schema() -> dict[str, Any]:
    schema = openapi_schema(api.LoraTrainingJobStatus)
    # Status is written by the operator only, never by users: defaults would
    # only make empty lists appear on objects that have not started.
    def strip_defaults(node: Any) -> None:
        if isinstance(node, dict):
            node.pop("default", None)
            for value in node.values():
                strip_defaults(value)
        elif isinstance(node, list):
            for value in node:
                strip_defaults(value)

    strip_defaults(schema)
    schema["properties"]["conditions"]["x-kubernetes-list-type"] = "map"
    schema["properties"]["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
    return schema


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Step", "type": "string", "jsonPath": ".status.trainer.stepSummary"},
    {"name": "Progress", "type": "integer", "jsonPath": ".status.trainer.progress",
     "description": "Overall progress in percent"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.trainer.loss"},
    {"name": "XP", "type": "integer", "jsonPath": ".status.xp"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Job", "type": "string", "priority": 1, "jsonPath": ".status.jobName"},
    {"name": "Adapter", "type": "string", "priority": 1, "jsonPath": ".status.trainer.artifacts.adapterUri"},
]


def build_crd() -> dict[str, Any]:
    spec_schema = openapi_schema(api.LoraTrainingJobSpec)
    spec_schema["description"] = (api.LoraTrainingJobSpec.__doc__ or "").strip()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": ["all", "lora"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "Fine-tunes a causal LLM with LoRA and reports progress, "
                            "before/after quality metrics and XP in its status.",
                            "required": ["spec"],
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"size(self.metadata.name) <= {builders.MAX_NAME_LENGTH}",
                                    "message": f"metadata.name must be at most {builders.MAX_NAME_LENGTH} "
                                    "characters: the trainer Job and its pod labels derive from it",
                                }
                            ],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": _status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `python -m lora_operator.crd` from lora_contract/api.py. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    """Write the CRD to the given folders, default ``crds/`` and the Helm chart's ``crds/``."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(__file__).resolve().parents[2]
    out_dirs = [Path(a) for a in args] or [root / "crds", root / "charts" / "lora-operator" / "crds"]
    text = render()
    for out_dir in out_dirs:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / CRD_FILE).write_text(text)
        print(out_dir / CRD_FILE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
