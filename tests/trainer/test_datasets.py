"""Step 1: every source, file type and row format, bad rows, and the refinement rules."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lora_trainer import refine
from lora_trainer.context import PreparedData
from lora_trainer.errors import InvalidInput, StepError
from lora_trainer.formats import Example
from lora_trainer.steps.datasets import prepare, summary
from tests.http_fakes import serve_folder
from tests.trainer.conftest import handbook_rows, tiny_spec

ALPACA = {"instruction": "What is a Sprout?", "input": "", "output": "A Sprout is a minion with fewer than 100 XP."}
CHAT = {"messages": [
    {"role": "system", "content": "You answer from the Minion Handbook."},
    {"role": "user", "content": "What is a Runner?"},
    {"role": "assistant", "content": "A Runner holds between 100 and 499 XP."},
    {"role": "user", "content": "And its badge?"},
    {"role": "assistant", "content": "Runners wear a blue badge on every Lantern."},
]}
PROMPT_COMPLETION = {"prompt": "What is an Artisan?", "completion": "An Artisan holds 500 to 1,499 XP."}
CONVERSATIONAL = {"prompt": [{"role": "user", "content": "What is a Warden?"}],
                  "completion": [{"role": "assistant", "content": "A Warden mentors up to three Sprouts."}]}
TEXT = {"text": "The Ledger records every minion's XP, rank, quests and forges."}
NO_SPLIT = {"validationFraction": 0.0, "maxItems": None}


def load(model: Path, datasets: list[dict[str, Any]], tokenizer: Any, **data: Any) -> PreparedData:
    return prepare(tiny_spec(model, datasets=datasets, data={**NO_SPLIT, **data}), tokenizer)


def test_every_row_format_converts_to_prompt_and_completion(tiny_model: Path, tiny_tokenizer: Any) -> None:
    alpaca_with_input = {**ALPACA, "input": "Answer in one sentence.", "system": "Be brief."}
    rows = [ALPACA, alpaca_with_input, CHAT, PROMPT_COMPLETION, CONVERSATIONAL, TEXT]
    data = load(tiny_model, [{"inline": rows}], tiny_tokenizer)
    assert len(data.train) == 6
    by_answer = {e.completion: e for e in data.train[1:]}

    plain = data.train[0]
    assert plain.prompt == [{"role": "user", "content": "What is a Sprout?"}]
    assert plain.prompt_text == "<|im_start|>user\nWhat is a Sprout?<|im_end|>\n<|im_start|>assistant\n"
    assert plain.completion_text == ALPACA["output"] + "<|im_end|>\n"
    assert plain.location == "inline-0 item 1"
    with_input = data.train[1]
    assert with_input.prompt == [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "What is a Sprout?\n\nAnswer in one sentence."}]
    chat = by_answer["Runners wear a blue badge on every Lantern."]
    assert [m["role"] for m in chat.prompt] == ["system", "user", "assistant", "user"]
    assert chat.query == "And its badge?"
    assert by_answer[PROMPT_COMPLETION["completion"]].prompt[0]["content"] == "What is an Artisan?"
    assert by_answer["A Warden mentors up to three Sprouts."].query == "What is a Warden?"
    text = by_answer[TEXT["text"]]
    assert text.prompt == [] and text.prompt_ids == [] and text.completion_ids[-1] == tiny_tokenizer.eos_token_id


def test_declared_format_is_enforced(tiny_model: Path, tiny_tokenizer: Any) -> None:
    data = load(tiny_model, [{"inline": [ALPACA, CHAT], "format": "chat", "name": "chats"}], tiny_tokenizer)
    assert len(data.train) == 1
    assert data.stats["errors"] == ["chats item 1: 'messages' must be a non-empty list of {role, content} messages"]
    assert data.stats["sources"]["chats"]["malformed"] == 1


def _write_all_types(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = handbook_rows()
    files = {
        "jsonl": folder / "a.jsonl", "json": folder / "b.json", "json-data": folder / "c.json",
        "csv": folder / "d.csv", "parquet": folder / "e.parquet",
    }
    files["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows[0:4]))
    files["json"].write_text(json.dumps(rows[4:7]))
    files["json-data"].write_text(json.dumps({"data": rows[7:9]}))
    files["csv"].write_text(
        "messages,instruction,output\n"
        + '"' + json.dumps(CHAT["messages"]).replace('"', '""') + '",,\n'
        + ',"What is a Luminary?","A Luminary holds 4,000 XP or more, and wears gold."\n'
    )
    pq.write_table(pa.Table.from_pylist(rows[9:12]), files["parquet"])
    return files


@pytest.mark.parametrize(("kind", "count", "location"), [
    ("jsonl", 4, "a.jsonl:1"), ("json", 3, "b.json: item 1"), ("json-data", 2, "c.json: item 1"),
    ("csv", 2, "d.csv:2"), ("parquet", 3, "e.parquet: row 1"),
])
def test_every_file_type(tmp_path: Path, tiny_model: Path, tiny_tokenizer: Any, kind: str, count: int,
                         location: str) -> None:
    path = _write_all_types(tmp_path)[kind]
    data = load(tiny_model, [{"path": str(path)}], tiny_tokenizer)
    assert len(data.train) == count and not data.stats["errors"]
    assert data.train[0].location == location


def test_a_folder_reads_every_data_file_and_skips_hidden_ones(tmp_path: Path, tiny_model: Path,
                                                             tiny_tokenizer: Any) -> None:
    _write_all_types(tmp_path / "nested")
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "ignored.jsonl").write_text(json.dumps(ALPACA) + "\n")
    (tmp_path / "notes.txt").write_text("not data")
    data = load(tiny_model, [{"path": str(tmp_path), "name": "folder"}], tiny_tokenizer)
    assert data.stats["rowsRead"] == 14 and len(data.train) == 14
    assert {e.location.split(":")[0] for e in data.train} == {
        "nested/a.jsonl", "nested/b.json", "nested/c.json", "nested/d.csv", "nested/e.parquet"}


@pytest.mark.parametrize(("suffix", "compress"), [(".gz", gzip.compress), (".bz2", bz2.compress),
                                                 (".xz", lzma.compress)])
def test_compressed_files_of_every_type_are_read(tmp_path: Path, tiny_model: Path, tiny_tokenizer: Any,
                                                 suffix: str, compress: Any) -> None:
    (tmp_path / "packed").mkdir()
    for path in _write_all_types(tmp_path / "plain").values():
        (tmp_path / "packed" / (path.name + suffix)).write_bytes(compress(path.read_bytes()))
    (tmp_path / "nameless").write_bytes(compress((tmp_path / "plain" / "a.jsonl").read_bytes()))  # type sniffed

    def items(source: str) -> list[tuple[str, Any, Any]]:
        data = load(tiny_model, [{"path": str(tmp_path / source)}], tiny_tokenizer)
        assert not data.stats["errors"]
        return [(e.location.replace(suffix, ""), e.prompt, e.completion) for e in data.train]

    plain = items("plain")
    assert items("packed") == plain and len(plain) == 14
    assert [item[1:] for item in items("nameless")] == [item[1:] for item in plain if item[0].startswith("a.")]


def test_configmap_datasets_are_read_from_the_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    tiny_model: Path, tiny_tokenizer: Any) -> None:
    monkeypatch.setenv("LORA_CONFIGMAP_DIR", str(tmp_path))
    (tmp_path / "handbook").mkdir()
    (tmp_path / "handbook" / "train").write_text(json.dumps(ALPACA) + "\n" + json.dumps(TEXT) + "\n")  # sniffed
    data = load(tiny_model, [{"configMap": {"name": "handbook", "key": "train"}}], tiny_tokenizer)
    assert [e.location for e in data.train] == ["handbook/train:1", "handbook/train:2"]
    assert list(data.stats["sources"]) == ["handbook/train"]
    with pytest.raises(InvalidInput, match=r"missing.*does not exist.*ConfigMap 'handbook'"):
        load(tiny_model, [{"configMap": {"name": "handbook", "key": "missing"}}], tiny_tokenizer)


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with serve_folder(tmp_path) as base:
        yield base, tmp_path


def test_url_datasets_are_downloaded(http_folder: tuple[str, Path], tiny_model: Path, tiny_tokenizer: Any) -> None:
    base, folder = http_folder
    _write_all_types(folder)
    data = load(tiny_model, [{"url": f"{base}/d.csv"}, {"url": f"{base}/e.parquet?version=2"}], tiny_tokenizer)
    assert len(data.train) == 5 and set(data.stats["sources"]) == {"d.csv", "e.parquet"}
    with pytest.raises(InvalidInput, match="HTTP 404 File not found: the URL is wrong or needs access"):
        load(tiny_model, [{"url": f"{base}/missing.jsonl"}], tiny_tokenizer)  # exit 2: a retry cannot help
    (folder / "page.html").write_text("<html><body>Sign in</body></html>")
    with pytest.raises(InvalidInput, match="answered an HTML page, not a data file"):
        load(tiny_model, [{"url": f"{base}/page.html"}], tiny_tokenizer)


def test_url_downloads_are_capped_and_follow_http_redirects_only(
        http_folder: tuple[str, Path], tiny_model: Path, tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    base, folder = http_folder
    _write_all_types(folder)
    monkeypatch.setenv("LORA_MAX_DOWNLOAD_BYTES", "10")
    with pytest.raises(InvalidInput, match=r"larger than 10 bytes \(\$LORA_MAX_DOWNLOAD_BYTES\)"):
        load(tiny_model, [{"url": f"{base}/d.csv"}], tiny_tokenizer)

    class ToFtp(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/d.csv")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), ToFtp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(StepError, match="refused redirect to ftp://"):
            load(tiny_model, [{"url": f"http://127.0.0.1:{server.server_port}/d.csv"}], tiny_tokenizer)
    finally:
        server.shutdown()


def test_text_is_utf8_with_or_without_bom_and_undecodable_bytes_are_counted(tmp_path: Path, tiny_model: Path,
                                                                             tiny_tokenizer: Any) -> None:
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffinstruction,output\nWhat is a Sprout?,A Sprout has fewer than 100 XP.\n".encode())
    data = load(tiny_model, [{"path": str(bom)}], tiny_tokenizer)
    assert data.train[0].query == "What is a Sprout?" and data.stats["undecodable"] == 0
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(json.dumps({"instruction": "Qu'est-ce qu'un Sprout ?", "output": "Un minion \u00e0 0 XP."},
                                  ensure_ascii=False).encode("latin-1") + b"\n")
    data = load(tiny_model, [{"path": str(latin1)}], tiny_tokenizer)
    assert data.stats["undecodable"] == 1 and data.stats["sources"]["latin1.jsonl"]["undecodable"] == 1
    assert "1 undecodable byte sequence(s) read as U+FFFD" in summary(data.stats)


def test_csv_cells_are_json_only_when_they_hold_messages(tmp_path: Path, tiny_model: Path,
                                                         tiny_tokenizer: Any) -> None:
    path = tmp_path / "pc.csv"
    messages = json.dumps([{"role": "user", "content": "What is a Warden?"}])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "completion"])
        writer.writerow(["[1, 2] is a list: what is its length?", "Its length is 2."])
        writer.writerow(["[draft] What is a Runner?", "A Runner holds 100 to 499 XP."])
        writer.writerow([messages, "A Warden mentors up to three Sprouts."])
    data = load(tiny_model, [{"path": str(path)}], tiny_tokenizer)
    assert not data.stats["errors"]
    assert [e.query for e in data.train] == ["[1, 2] is a list: what is its length?", "[draft] What is a Runner?",
                                             "What is a Warden?"]


def test_hub_datasets_go_through_load_dataset(tmp_path: Path, tiny_model: Path, tiny_tokenizer: Any) -> None:
    # load_dataset also takes a local folder, which keeps this test offline.
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in handbook_rows()[:5]))
    data = load(tiny_model, [{"hubId": str(tmp_path), "split": "train"}], tiny_tokenizer)
    assert len(data.train) == 5 and data.train[0].location == f"{tmp_path} row 1"
    # The tests run with $HF_HUB_OFFLINE=1: a dataset not cached cannot appear on a retry (exit 2).
    with pytest.raises(InvalidInput, match="is not in the local cache and the hub is switched off"):
        load(tiny_model, [{"hubId": str(tmp_path / "nope")}], tiny_tokenizer)


def test_bad_rows_are_reported_with_file_and_line_and_skipped(tmp_path: Path, tiny_model: Path,
                                                              tiny_tokenizer: Any) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([
        json.dumps(ALPACA), json.dumps(PROMPT_COMPLETION), '{"instruction": "broken', "[1, 2]",
        json.dumps({"instruction": "No answer", "output": ""}), json.dumps({"question": "?"}), json.dumps(TEXT),
    ]) + "\n")
    data = load(tiny_model, [{"path": str(bad)}], tiny_tokenizer)
    assert len(data.train) == 3
    assert data.stats["errors"] == [
        "bad.jsonl:3: invalid JSON: Unterminated string starting at (column 17)",
        "bad.jsonl:4: expected a JSON object, got list",
        "bad.jsonl:5: 'output' is missing or empty",
        "bad.jsonl:6: unknown row format (keys: question); expected instruction/output, messages, "
        "prompt/completion or text",
    ]
    message = summary(data.stats)
    assert "4 malformed row(s) skipped: bad.jsonl:3: invalid JSON" in message and "; +1 more" in message


def test_hostile_files_are_malformed_rows_not_crashes(tmp_path: Path, tiny_model: Path,
                                                      tiny_tokenizer: Any) -> None:
    """JSON nested deeper than the parser's stack and a CSV field over the csv module's limit (128 KiB) are
    reported with the file and line like any bad row; the good rows before them still train."""
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "deep.jsonl").write_text(json.dumps(ALPACA) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    (tmp_path / "huge.csv").write_text('prompt,completion\n"What?","Fine."\n"Big?","' + "x" * 5_000_000 + '"\n')
    data = load(tiny_model, [{"path": str(tmp_path / f)} for f in ("deep.json", "deep.jsonl", "huge.csv")],
                tiny_tokenizer)
    assert len(data.train) == 2
    assert data.stats["errors"] == [
        "deep.json: invalid JSON: nested too deeply to parse; file skipped",
        "deep.jsonl:2: invalid JSON: nested too deeply to parse",
        "huge.csv: the record after line 2: malformed CSV: field larger than field limit (131072); rest of "
        "the file skipped",
    ]
    with pytest.raises(InvalidInput, match=r"no usable training items.*deep.json: invalid JSON: nested too deeply"):
        load(tiny_model, [{"path": str(tmp_path / "deep.json")}], tiny_tokenizer)


def test_a_dataset_left_empty_fails_clearly(tmp_path: Path, tiny_model: Path, tiny_tokenizer: Any) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nothing": 1}\n')
    with pytest.raises(InvalidInput, match=r"no usable training items: 1 rows .* 1 malformed row\(s\) skipped: "
                                           r"bad.jsonl:1: unknown row format"):
        load(tiny_model, [{"path": str(bad)}], tiny_tokenizer)
    with pytest.raises(InvalidInput, match=r"no usable training items.*dropped 1 too short"):
        load(tiny_model, [{"inline": [ALPACA]}], tiny_tokenizer, minTextLength=1000)
    with pytest.raises(InvalidInput, match="does not exist"):
        load(tiny_model, [{"path": str(tmp_path / "missing.jsonl")}], tiny_tokenizer)


def _example(prompt: str, answer: str) -> Example:
    return Example("src", "loc", [{"role": "user", "content": prompt}], answer)


def test_exact_and_near_duplicates() -> None:
    base = "A Warden mentors up to three Sprouts and sits on review panels for disputed forge reports."
    items = [
        _example("What does a Warden do?", base),
        _example("what does a   WARDEN do?", base.upper()),  # exact duplicate once normalized
        _example("What does a Warden do?", base.replace("three", "3")),  # near duplicate
        _example("What is an Odyssey?", "An Odyssey is a complex quest worth 30 XP, due in 30 days."),
    ]
    exact = refine.drop_exact_duplicates(items)
    assert len(exact) == 3
    assert len(refine.drop_near_duplicates(exact, 0.7)) == 2
    assert len(refine.drop_near_duplicates(exact, 0.95)) == 3
    assert len(refine.drop_near_duplicates(exact, 1.0)) == 3  # disabled


def test_quality_score_and_drop() -> None:
    good = _example("What is a Lantern?", "A Lantern is the four-part report a minion files after a quest.")
    short = _example("What is a Lantern?", "A report.")
    loop = _example("What is a Lantern?", "report report report report report report report report")
    symbols = _example("What is a Lantern?", "#### ---- **** 1234 5678 !!!! ???? ////")
    echo = _example("What is a Lantern? It is a report filed after quests", "it is a report filed after quests")
    scores = {name: refine.quality_score(e) for name, e in
              {"good": good, "short": short, "loop": loop, "symbols": symbols, "echo": echo}.items()}
    assert scores["good"] > 0.95  # punctuation counts against the letters share, a little
    assert max(scores["short"], scores["loop"], scores["symbols"], scores["echo"]) < 0.6
    kept = refine.drop_low_quality([good, short, loop, symbols, echo], 0.6)
    assert kept == [good, echo]  # floor(0.6 x 5) = 3 dropped: the three lowest scores


def test_split_is_seeded_and_deterministic() -> None:
    items = [_example(f"Question {i}?", f"Answer number {i} about the handbook.") for i in range(50)]
    train, val = refine.split(items, 0.1, seed=7)
    again_train, again_val = refine.split(items, 0.1, seed=7)
    assert (train, val) == (again_train, again_val) and len(val) == 5 and len(train) == 45
    assert refine.split(items, 0.1, seed=8)[1] != val
    assert not set(map(id, train)) & set(map(id, val))
    small_train, small_val = refine.split(items, 0.1, seed=7, max_items=10)
    assert len(small_train) + len(small_val) == 10 and len(small_val) == 1
    assert refine.split(items[:1], 0.5, seed=7) == (items[:1], [])  # never hold out the only item
    assert refine.split(items, 0.0, seed=7)[1] == []


def test_statistics_count_each_rule_per_source(tiny_model: Path, tiny_tokenizer: Any) -> None:
    rows = [ALPACA, ALPACA, PROMPT_COMPLETION, {"instruction": "Hi", "output": "Ok"}, TEXT]
    data = load(tiny_model, [{"inline": rows, "name": "a"}, {"inline": [CHAT, {"bad": 1}], "name": "b"}],
                tiny_tokenizer, minTextLength=12, validationFraction=0.25)
    stats = data.stats
    assert stats["rowsRead"] == 7 and stats["malformed"] == 1
    assert stats["dropped"]["exact duplicates"] == 1 and stats["dropped"]["too short"] == 1
    assert stats["train"] + stats["validation"] == 4 and stats["validation"] == 1
    assert stats["sources"]["a"]["dropped exact duplicates"] == 1
    b = stats["sources"]["b"]
    assert (b["rows"], b["malformed"], b.get("train", 0) + b.get("validation", 0)) == (2, 1, 1)  # CHAT kept
    assert sum(s.get("train", 0) for s in stats["sources"].values()) == stats["train"] == 3
    assert stats["tokens"]["max"] >= stats["tokens"]["mean"] > 0


def test_prompts_longer_than_max_length_are_dropped(tiny_model: Path, tiny_tokenizer: Any) -> None:
    long_prompt = {"instruction": "Explain the handbook. " * 60, "output": "It is long."}
    data = load(tiny_model, [{"inline": [ALPACA, long_prompt]}], tiny_tokenizer)
    assert len(data.train) == 1 and data.stats["dropped"]["prompt fills maxLength"] == 1
