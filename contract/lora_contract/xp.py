"""XP: the product spec's piecewise-linear table over training items, scaled by quality.

Past the table's last point the last segment's slope continues up to ``XP_CAP``, so more data
still earns more but without bound; the quality multiplier rewards improvement and halves XP
for a regression or when nothing was graded, and XP is never negative (docs/grading.md).
"""

from __future__ import annotations

import bisect

from lora_contract.api import TrainerStatus

XP_TABLE: tuple[tuple[int, int], ...] = ((0, 0), (10, 25), (100, 250), (500, 800), (4800, 1500), (20000, 2800))
XP_CAP = 4000
# XP multiplier per weighted-overall point gained, and its bounds.
QUALITY_SLOPE = 1 / 50
QUALITY_BOUNDS = (0.5, 1.5)


def base_xp(items: int) -> float:
    """Linear interpolation in ``XP_TABLE``; beyond it, the last slope up to ``XP_CAP``."""
    if items <= 0:
        return 0.0
    xs = [x for x, _ in XP_TABLE]
    i = min(bisect.bisect_right(xs, items), len(XP_TABLE) - 1)
    (x0, y0), (x1, y1) = XP_TABLE[i - 1], XP_TABLE[i]
    return min(XP_CAP, y0 + (y1 - y0) * (items - x0) / (x1 - x0))


def quality_multiplier(quality_points: float | None) -> float:
    """1 + points / 50 within [0.5, 1.5]; 0.5 when nothing was graded, so that turning evaluation
    off never earns more than a graded run."""
    low, high = QUALITY_BOUNDS
    if quality_points is None:
        return low
    return min(high, max(low, 1 + quality_points * QUALITY_SLOPE))


def award_xp(items: int, quality_points: float | None) -> int:
    return max(0, round(base_xp(items) * quality_multiplier(quality_points)))


def xp_for(trainer: TrainerStatus) -> int | None:
    """XP for what the trainer reported: its distinct training items and the before/after weighted overall
    scores (never its own improvements figures). None until the trainer has reported its items."""
    if trainer.train_items is None:
        return None
    before, after = trainer.before, trainer.after
    points = None
    if before and after and before.weighted_overall is not None and after.weighted_overall is not None:
        points = after.weighted_overall - before.weighted_overall
    return award_xp(trainer.train_items, points)
