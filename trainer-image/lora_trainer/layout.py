"""Where a run writes what under its output folder, in one place, so the steps, the report and the
bench agree (docs/trainer.md shows the tree):

    OUTPUT/dataset-stats.json     step 1: counts of what was kept and dropped
    OUTPUT/evaluation/            before.json (step 0), testing.json (step 7), after.json (step 8)
    OUTPUT/checkpoints/           checkpoint-N/ of step 4, resumed by a retried pod
    OUTPUT/adapter/, merged/      step 5 (written as adapter.partial/, merged.partial/, renamed when complete)
    OUTPUT/manifest.json          step 5: every file of adapter/ and merged/, with sizes and SHA-256
    OUTPUT/report.json            the end: the final status, XP and exit code

Every file and folder gets its name only once it is complete (``write_atomically``, ``staging``): a pod
killed mid-write leaves a ``.partial`` name, never a file that looks finished, for the user or the retry.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Readers (a retried pod, the user, the bench) see the old file or the new one, never half of one."""
    partial = staging(path)
    partial.write_text(text)
    os.replace(partial, path)


def sha256(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB chunks (merged models are many GB): the manifest's and the
    uploads' (``destinations``) check."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def staging(path: Path) -> Path:
    """Where ``path`` is written until it is complete."""
    return path.with_name(path.name + ".partial")


@dataclass(frozen=True)
class OutputLayout:
    root: Path

    @property
    def dataset_stats(self) -> Path:
        return self.root / "dataset-stats.json"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    def evaluation_record(self, name: str) -> Path:
        """``before``, ``after`` or ``testing``."""
        return self.evaluation / f"{name}.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def rewritten_by_a_retry(self) -> tuple[Path, ...]:
        """What an earlier attempt of the same run may have written that this one overwrites."""
        return self.checkpoints, self.adapter, self.merged, staging(self.adapter), staging(self.merged)
