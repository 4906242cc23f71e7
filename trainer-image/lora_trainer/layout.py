"""Where a run writes what under its output folder, in one place, so the steps, the report and the
bench agree (docs/trainer.md shows the tree):

    OUTPUT/dataset-stats.json     step 1: counts of what was kept and dropped
    OUTPUT/evaluation/            before.json (step 0), testing.json (step 7), after.json (step 8)
    OUTPUT/checkpoints/           checkpoint-N/ of step 4, resumed by a retried pod
    OUTPUT/adapter/, merged/      step 5
    OUTPUT/manifest.json          step 5: every file of adapter/ and merged/, with sizes and SHA-256
    OUTPUT/report.json            the end: the final status, XP and exit code
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
        return self.checkpoints, self.adapter, self.merged
