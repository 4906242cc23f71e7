"""Generate the CustomResourceDefinition from the pydantic models in ``api``.

Pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 schema:
no ``$ref``, no ``anyOf: [X, null]`` for optional fields, ``exclusiveMinimum`` as a
boolean, ``x-kubernetes-preserve-unknown-fields`` for free-form objects. This module does
that conversion, so ``crds/`` is never edited by hand: ``python -m lora_operator.crd``
rewrites it and ``tests/unit/test_crd.py`` fails when the committed file drifts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lora_contract import api, minion
from lora_operator import builders

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


def _status_schema(model: type[api.BaseModel]) -> dict[str, Any]:
    schema = openapi_schema(model)
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


@dataclass(frozen=True)
class Kind:
    """One custom resource kind of the API group, as its CRD needs it."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]
    description: str
    spec: type[api.BaseModel]
    status: type[api.BaseModel]
    columns: list[dict[str, Any]]
    validations: list[dict[str, str]] = field(default_factory=list)

    @property
    def file(self) -> str:
        return f"{api.GROUP}_{self.plural}.yaml"


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
    {"name": "Minion", "type": "string", "priority": 1, "jsonPath": ".spec.minion"},
]

RUNS = Kind(
    api.KIND, api.PLURAL, api.SINGULAR, api.SHORT_NAMES,
    "Fine-tunes a causal LLM with LoRA and reports progress, before/after quality metrics and XP in its status.",
    api.LoraTrainingJobSpec, api.LoraTrainingJobStatus, PRINTER_COLUMNS,
    [{"rule": f"size(self.metadata.name) <= {builders.MAX_NAME_LENGTH}",
      "message": f"metadata.name must be at most {builders.MAX_NAME_LENGTH} characters: the trainer Job and its "
                 "pod labels derive from it"}])
MINIONS = Kind(
    minion.KIND, minion.PLURAL, minion.SINGULAR, minion.SHORT_NAMES,
    "A minion: the XP of the LoraTrainingJobs that name it adds up to levels, and it serves the adapter of its "
    "newest good run.", minion.MinionSpec, minion.MinionStatus,
    [{"name": "Level", "type": "integer", "jsonPath": ".status.level"},
     {"name": "XP", "type": "integer", "jsonPath": ".status.xp"},
     {"name": "Runs", "type": "integer", "jsonPath": ".status.runs"},
     {"name": "Adapter", "type": "string", "jsonPath": ".status.adapter.uri"},
     {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
     {"name": "Next", "type": "integer", "priority": 1, "jsonPath": ".status.nextLevelXp",
      "description": "Total XP of the next level"},
     {"name": "Display", "type": "string", "priority": 1, "jsonPath": ".spec.displayName"}])
KINDS = (RUNS, MINIONS)
CRD_FILE = RUNS.file


def build_crd(kind: Kind = RUNS) -> dict[str, Any]:
    spec_schema = openapi_schema(kind.spec)
    spec_schema["description"] = (kind.spec.__doc__ or "").strip()
    root: dict[str, Any] = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": _status_schema(kind.status),
        },
    }
    if kind.validations:
        root["x-kubernetes-validations"] = kind.validations
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": kind.short_names,
                "categories": ["all", "lora"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": kind.columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render(kind: Kind = RUNS) -> str:
    source = "lora_contract/api.py" if kind is RUNS else "lora_contract/minion.py"
    header = f"# Generated by `python -m lora_operator.crd` from {source}. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(kind), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    """Write the CRD to the given folders, default ``crds/`` and the Helm chart's ``crds/``."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(__file__).resolve().parents[2]
    out_dirs = [Path(a) for a in args] or [root / "crds", root / "charts" / "lora-operator" / "crds"]
    for out_dir in out_dirs:
        out_dir.mkdir(parents=True, exist_ok=True)
        for kind in KINDS:
            (out_dir / kind.file).write_text(render(kind))
            print(out_dir / kind.file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
