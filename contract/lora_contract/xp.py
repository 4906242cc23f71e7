"""XP: the product spec's piecewise-linear table over training items, scaled by quality.

Past the table's last point the last segment's slope continues up to ``XP_CAP``, so more data
still earns more but without bound. The quality multiplier rewards improvement measured two ways
that wording cannot move: the builtin grader's fact checks (points of weighted overall) and the
model's own likelihood of the held-out reference answers (knowledge points); it halves XP for a
regression or when nothing was measured, and XP is never negative (docs/grading.md).
"""

from __future__ import annotations

import bisect
import math
from statistics import fmean

from lora_contract.api import TrainerStatus

XP_TABLE: tuple[tuple[int, int], ...] = ((0, 0), (10, 25), (100, 250), (500, 800), (4800, 1500), (20000, 2800))
XP_CAP = 4000
# XP multiplier per quality point gained, and its bounds.
QUALITY_SLOPE = 1 / 50
QUALITY_BOUNDS = (0.5, 1.5)
# Items count for XP after this near-duplicate rule whatever the run's own refine settings, so a run
# cannot earn XP for near-copies by loosening ``refine.nearDuplicateThreshold`` (docs/grading.md).
XP_NEAR_DUPLICATE = 0.9


def base_xp(items: int) -> float:
    """Linear interpolation in ``XP_TABLE``; beyond it, the last slope up to ``XP_CAP``."""
    if items <= 0:
        return 0.0
    xs = [x for x, _ in XP_TABLE]
    i = min(bisect.bisect_right(xs, items), len(XP_TABLE) - 1)
    (x0, y0), (x1, y1) = XP_TABLE[i - 1], XP_TABLE[i]
    return min(XP_CAP, y0 + (y1 - y0) * (items - x0) / (x1 - x0))


def knowledge_points(before_loss: float | None, after_loss: float | None) -> float | None:
    """100 x (exp(-after loss) - exp(-before loss)): the change, in points of 0-100, of the geometric-mean
    probability the model gives each token of the held-out reference answers. It is the model's own
    likelihood of the right answers, so how it words its generated answers cannot move it."""
    if before_loss is None or after_loss is None:
        return None
    return 100 * (math.exp(-after_loss) - math.exp(-before_loss))


def quality_signal(quality_points: float | None, knowledge: float | None) -> float | None:
    """The mean of the measured signals (grader points, knowledge points); None when neither was measured."""
    measured = [v for v in (quality_points, knowledge) if v is not None]
    return fmean(measured) if measured else None


def quality_multiplier(signal: float | None) -> float:
    """1 + signal / 50 within [0.5, 1.5]; 0.5 when nothing was measured, so that turning evaluation
    off never earns more than a measured run."""
    low, high = QUALITY_BOUNDS
    if signal is None:
        return low
    return min(high, max(low, 1 + signal * QUALITY_SLOPE))


def award_xp(items: int, signal: float | None) -> int:
    return max(0, round(base_xp(items) * quality_multiplier(signal)))


def xp_signal(trainer: TrainerStatus) -> float | None:
    """The quality signal of what the trainer reported: the before/after weighted overall of the builtin
    grader's scores and the before/after held-out loss (never its own improvements figures)."""
    before, after = trainer.before, trainer.after
    points = knowledge = None
    if before and after:
        if before.weighted_overall is not None and after.weighted_overall is not None:
            points = after.weighted_overall - before.weighted_overall
        knowledge = knowledge_points(before.eval_loss, after.eval_loss)
    return quality_signal(points, knowledge)


def xp_for(trainer: TrainerStatus) -> int | None:
    """XP for what the trainer reported: its distinct training items and ``xp_signal``. None until the
    trainer has reported its items."""
    if trainer.train_items is None:
        return None
    return award_xp(trainer.train_items, xp_signal(trainer))
