"""Download progress inside a step: notes while the folder grows, none while it does not."""

from __future__ import annotations

import os
import time
from pathlib import Path

from lora_trainer.growth import reporting_growth


def test_notes_follow_real_growth_only(tmp_path: Path) -> None:
    cache, staging = tmp_path / "cache", tmp_path / "staging"
    cache.mkdir(), staging.mkdir()
    (cache / "already-there").write_bytes(b"x" * 5_000_000)  # an earlier download is not counted
    notes: list[str] = []
    with reporting_growth(cache, "loading the base model", notes.append, interval=0.05):
        for part in range(3):
            (staging / f"part-{part}").write_bytes(b"x" * 1_000_000)
            os.replace(staging / f"part-{part}", cache / f"part-{part}")  # whole files appear, as the hub's do
            time.sleep(0.2)
        quiet = len(notes)
        time.sleep(0.3)  # a hung download: nothing new to say
        assert len(notes) == quiet
    assert notes[-1] == "loading the base model: 3 MB downloaded"
    assert len(notes) == len(set(notes)) <= 3 and notes == sorted(notes)  # one note per growth, growing


def test_no_growth_no_notes(tmp_path: Path) -> None:
    notes: list[str] = []
    with reporting_growth(tmp_path / "missing", "loading", notes.append, interval=0.02):
        time.sleep(0.1)
    assert notes == []
