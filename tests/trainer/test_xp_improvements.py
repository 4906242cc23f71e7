"""XP table, quality multiplier and the improvement formulas, including their edges."""

from __future__ import annotations

import pytest

from lora_operator.api import GradeScores
from lora_trainer.steps.improvements import improvements, percent_change
from lora_trainer.xp import XP_CAP, XP_TABLE, award_xp, base_xp, quality_multiplier


@pytest.mark.parametrize(("items", "xp"), XP_TABLE)
def test_table_points_are_exact(items: int, xp: int) -> None:
    assert base_xp(items) == xp


@pytest.mark.parametrize(("items", "xp"), [(5, 12.5), (55, 137.5), (300, 525), (2650, 1150), (12400, 2150)])
def test_between_points_is_linear(items: int, xp: float) -> None:
    assert base_xp(items) == pytest.approx(xp)


def test_past_the_table_the_last_slope_continues_up_to_the_cap() -> None:
    slope = (2800 - 1500) / (20000 - 4800)
    assert base_xp(21000) == pytest.approx(2800 + 1000 * slope)
    assert base_xp(30000) < XP_CAP
    assert base_xp(10**6) == XP_CAP == base_xp(10**9)


def test_no_items_no_xp() -> None:
    assert base_xp(0) == base_xp(-3) == 0 == award_xp(0, 25.0)


@pytest.mark.parametrize(("points", "multiplier"), [
    (None, 1.0), (0.0, 1.0), (10.0, 1.2), (-10.0, 0.8), (25.0, 1.5), (80.0, 1.5), (-25.0, 0.5), (-100.0, 0.5),
])
def test_quality_multiplier_is_bounded(points: float | None, multiplier: float) -> None:
    assert quality_multiplier(points) == pytest.approx(multiplier)


def test_award_is_never_negative_and_rounds() -> None:
    assert award_xp(100, 10.0) == 300
    assert award_xp(100, -1000.0) == 125
    assert award_xp(7, 0.0) == round(7 * 2.5)


def test_percent_change_is_undefined_for_a_zero_or_missing_baseline() -> None:
    assert percent_change(0.0, 10.0) is None
    assert percent_change(None, 10.0) is None and percent_change(10.0, None) is None
    assert percent_change(50.0, 60.0) == 20.0
    assert percent_change(-2.0, -1.0) == 50.0


def test_improvements_with_zero_baselines() -> None:
    before = GradeScores(weighted_overall=0.0, seconds_per_answer=0.0, eval_loss=0.0, perplexity=0.0)
    after = GradeScores(weighted_overall=30.0, seconds_per_answer=1.0, eval_loss=1.0, perplexity=2.0)
    result = improvements(before, after)
    assert result.quality_percent is None and result.speed_percent is None and result.perplexity_percent is None
    assert result.quality_points == 30.0 and result.eval_loss_delta == 1.0


def test_improvements_signs() -> None:
    before = GradeScores(weighted_overall=40.0, seconds_per_answer=2.0, eval_loss=3.0, perplexity=20.0)
    after = GradeScores(weighted_overall=50.0, seconds_per_answer=1.5, eval_loss=2.0, perplexity=8.0)
    result = improvements(before, after)
    assert result.quality_percent == 25.0 and result.quality_points == 10.0
    assert result.speed_percent == 25.0  # faster is positive
    assert result.eval_loss_delta == -1.0 and result.perplexity_percent == -60.0  # lower is better


def test_improvements_without_measurements() -> None:
    result = improvements(None, GradeScores())
    assert result.model_dump(exclude_none=True) == {}
