"""XP table, quality multiplier and the improvement formulas, including their edges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lora_contract.api import GradeScores, Improvements, TrainerStatus
from lora_contract.progress import ReportEvent, initial_status, reduce
from lora_contract.xp import XP_CAP, XP_TABLE, award_xp, base_xp, quality_multiplier, xp_for
from lora_trainer.context import PreparedData, RunContext
from lora_trainer.formats import Example
from lora_trainer.steps.improvements import improvements, percent_change, run
from tests.trainer.conftest import tiny_spec


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
    (None, 0.5), (0.0, 1.0), (10.0, 1.2), (-10.0, 0.8), (25.0, 1.5), (80.0, 1.5), (-25.0, 0.5), (-100.0, 0.5),
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
    before = GradeScores(weighted_overall=0.0, tokens_per_second=0.0, eval_loss=0.0, perplexity=0.0)
    after = GradeScores(weighted_overall=30.0, tokens_per_second=10.0, eval_loss=1.0, perplexity=2.0)
    result = improvements(before, after)
    assert result.quality_percent is None and result.speed_percent is None and result.perplexity_percent is None
    assert result.quality_points == 30.0 and result.eval_loss_delta == 1.0


def test_improvements_signs() -> None:
    before = GradeScores(weighted_overall=40.0, tokens_per_second=10.0, eval_loss=3.0, perplexity=20.0)
    after = GradeScores(weighted_overall=50.0, tokens_per_second=12.5, eval_loss=2.0, perplexity=8.0)
    result = improvements(before, after)
    assert result.quality_percent == 25.0 and result.quality_points == 10.0
    assert result.speed_percent == 20.0  # 0.1 -> 0.08 s per token: faster is positive
    assert result.eval_loss_delta == -1.0 and result.perplexity_percent == -60.0  # lower is better


def test_speed_is_per_generated_token_so_shorter_answers_are_not_faster() -> None:
    before = GradeScores(seconds_per_answer=2.0, tokens_per_second=10.0)
    after = GradeScores(seconds_per_answer=0.5, tokens_per_second=10.0)  # a quarter of the tokens, same pace
    assert improvements(before, after).speed_percent == 0.0


def test_improvements_without_measurements() -> None:
    result = improvements(None, GradeScores())
    assert result.model_dump(exclude_none=True) == {}


def test_xp_counts_distinct_items_and_halves_when_nothing_was_graded(tmp_path: Path) -> None:
    def item(i: int) -> Example:
        return Example("s", f"s:{i}", [{"role": "user", "content": f"Question {i}?"}], f"Answer {i}.")

    rows = [item(i) for i in range(20)] + [item(i) for i in range(10)]  # dedupe off: ten rows twice
    rows[20].completion = "  ANSWER 0. "  # equal once normalized
    events: list[Any] = []
    ctx = RunContext(spec=tiny_spec(tmp_path), output_dir=tmp_path, emit=events.append, data=PreparedData(rows, [], {}))
    message = run(ctx)
    report = events[-1]
    assert isinstance(report, ReportEvent) and report.train_items == 20
    assert xp_for(reduce(initial_status(), report)) == 25  # what the operator awards for this report
    assert message == ("the operator awards 25 XP for 20 distinct training items "  # 50 base XP x 0.5
                       "(quality multiplier 0.50, nothing graded)")


def test_xp_for_a_report_uses_the_scores_not_the_reported_improvements() -> None:
    assert xp_for(TrainerStatus()) is None  # no items reported yet
    graded = TrainerStatus(train_items=100, before=GradeScores(weighted_overall=40.0),
                           after=GradeScores(weighted_overall=50.0), improvements=Improvements(quality_points=80.0))
    assert xp_for(graded) == award_xp(100, 10.0) == 300
    assert xp_for(graded.model_copy(update={"after": GradeScores()})) == award_xp(100, None) == 125
