"""XP table, quality multiplier and the improvement formulas, including their edges."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from lora_contract.api import GradeScores, Improvements, TrainerStatus
from lora_contract.progress import ReportEvent, initial_status, reduce
from lora_contract.rendering import speed_text
from lora_contract.xp import (
    XP_CAP,
    XP_TABLE,
    award_xp,
    base_xp,
    knowledge_points,
    quality_multiplier,
    quality_signal,
    xp_for,
    xp_signal,
)
from lora_trainer.context import PreparedData, RunContext
from lora_trainer.evaluation import EvalItem, grade_answers
from lora_trainer.formats import Example
from lora_trainer.generation import Answer
from lora_trainer.grader import BuiltinGrader
from lora_trainer.speed import SpeedBench, bench_scores
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
    before = GradeScores(weighted_overall=0.0, bench_tokens_per_second=0.0, mean_answer_tokens=0.0, eval_loss=0.0,
                         perplexity=0.0)
    after = GradeScores(weighted_overall=30.0, bench_tokens_per_second=10.0, mean_answer_tokens=5.0, eval_loss=1.0,
                        perplexity=2.0)
    result = improvements(before, after)
    assert result.quality_percent is None and result.speed_percent is None and result.perplexity_percent is None
    assert result.speed_noise_percent is None and result.answer_length_percent is None
    assert result.quality_points == 30.0 and result.eval_loss_delta == 1.0


def test_improvements_signs() -> None:
    before = GradeScores(weighted_overall=40.0, bench_tokens_per_second=10.0, bench_noise_percent=4.0,
                         mean_answer_tokens=40.0, eval_loss=3.0, perplexity=20.0)
    after = GradeScores(weighted_overall=50.0, bench_tokens_per_second=12.5, bench_noise_percent=6.0,
                        mean_answer_tokens=30.0, eval_loss=2.0, perplexity=8.0)
    result = improvements(before, after)
    assert result.quality_percent == 25.0 and result.quality_points == 10.0
    assert result.speed_percent == 25.0 and result.speed_noise_percent == 6.0  # faster is positive; the larger band
    assert result.answer_length_percent == -25.0
    assert result.eval_loss_delta == -1.0 and result.perplexity_percent == -60.0  # lower is better


def test_a_shorter_answering_model_does_not_read_as_slower() -> None:
    """The run that read "speed -89%": the graded answers' tokens per second fell with their length (each
    batch's fixed cost spread over fewer tokens), while the fixed workload ran at the same pace."""
    before = GradeScores(seconds_per_answer=0.164, tokens_per_second=292.0, mean_answer_tokens=48.0,
                         bench_tokens_per_second=400.0, bench_noise_percent=2.5)
    after = GradeScores(seconds_per_answer=0.074, tokens_per_second=32.0, mean_answer_tokens=2.4,
                        bench_tokens_per_second=396.0, bench_noise_percent=1.5)
    result = improvements(before, after)
    assert result.speed_percent == -1.0 and result.speed_noise_percent == 2.5
    assert speed_text(result.speed_percent, result.speed_noise_percent) == "speed: no change (within ±2.5%)"
    assert result.answer_length_percent == -95.0  # the length change is reported as a figure of its own


def test_two_measurements_of_one_model_read_as_no_change() -> None:
    runs = SpeedBench(8, 16, (52.0, 50.0, 49.0)), SpeedBench(8, 16, (50.5, 51.5, 48.5))
    before, after = (GradeScores(**bench_scores(b)) for b in runs)
    result = improvements(before, after)
    assert result.speed_percent == 1.0 and result.speed_noise_percent == 6.0  # medians 50 and 50.5; (52 - 49) / 50
    assert speed_text(result.speed_percent, result.speed_noise_percent) == "speed: no change (within ±6.0%)"


@pytest.mark.parametrize(("speed", "noise", "text"), [
    (0.0, 0.0, "speed: no change (within ±0.0%)"),
    (3.0, 3.0, "speed: no change (within ±3.0%)"),  # the band's edge is inside
    (-3.0, 3.0, "speed: no change (within ±3.0%)"),
    (3.1, 3.0, "speed: +3.1% faster"),
    (-12.0, 3.0, "speed: -12.0% slower"),
    (1.0, None, "speed: +1.0% faster"),  # without a band, any change counts
])
def test_speed_within_the_noise_is_no_change(speed: float, noise: float | None, text: str) -> None:
    assert speed_text(speed, noise) == text


def test_mean_answer_tokens_are_the_graded_answers_new_tokens() -> None:
    items = [EvalItem(f"query {i}", "What?", f"prompt {i}", None, ("answer",)) for i in (1, 2)]
    answers = [Answer("An answer.", 1.0, 4, 3, 3), Answer("A longer answer here.", 1.0, 7, 3, 3)]
    assert grade_answers(items, answers, BuiltinGrader()).scores.mean_answer_tokens == 5.5


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
                       "(quality multiplier 0.50, nothing measured)")


def test_near_copies_count_once_for_xp_whatever_the_refine_settings(tmp_path: Path) -> None:
    """``nearDuplicateThreshold: 1`` trains on near-copies; XP counts them by the fixed 0.9 rule."""
    base = "The Dawn Review is held every Monday at six in the morning and confirms promotions and demotions"
    rows = [Example("s", f"s:{i}", [{"role": "user", "content": "When is the Dawn Review?"}],
                    base + (" today." if i else ".")) for i in range(2)]
    rows.append(Example("s", "s:2", [{"role": "user", "content": "What are embers?"}], "Compute credit."))
    events: list[Any] = []
    run(RunContext(spec=tiny_spec(tmp_path), output_dir=tmp_path, emit=events.append,
                   data=PreparedData(rows, [], {})))
    assert events[-1].train_items == 2


def test_knowledge_points_are_the_change_of_the_reference_tokens_mean_probability() -> None:
    assert knowledge_points(2.0, 1.0) == pytest.approx(100 * (math.exp(-1.0) - math.exp(-2.0)))  # +23.3
    assert knowledge_points(1.0, 2.0) < 0 and knowledge_points(None, 1.0) is None
    assert quality_signal(10.0, 20.0) == 15.0 and quality_signal(None, 20.0) == 20.0
    assert quality_signal(None, None) is None


def test_xp_uses_grader_points_and_knowledge_points_together() -> None:
    """Wording cannot move the knowledge signal: a run whose answers read better but whose likelihood of
    the right answers fell does not earn the full bonus."""
    before = GradeScores(weighted_overall=40.0, eval_loss=2.0)
    after = GradeScores(weighted_overall=60.0, eval_loss=2.2)
    trainer = TrainerStatus(train_items=100, before=before, after=after)
    signal = (20.0 + knowledge_points(2.0, 2.2)) / 2
    assert xp_signal(trainer) == pytest.approx(signal)
    assert xp_for(trainer) == award_xp(100, signal) < award_xp(100, 20.0)
    loss_only = TrainerStatus(train_items=100, before=GradeScores(eval_loss=2.0), after=GradeScores(eval_loss=1.5))
    assert xp_for(loss_only) == award_xp(100, knowledge_points(2.0, 1.5))


def test_the_step_message_reads_speed_against_its_noise_and_answer_length_apart(tmp_path: Path) -> None:
    ctx = RunContext(spec=tiny_spec(tmp_path), output_dir=tmp_path, emit=lambda event: None,
                     data=PreparedData([], [], {}))
    ctx.before = GradeScores(weighted_overall=40.0, bench_tokens_per_second=400.0, bench_noise_percent=2.5,
                             mean_answer_tokens=48.0)
    ctx.after = GradeScores(weighted_overall=40.0, bench_tokens_per_second=396.0, bench_noise_percent=1.5,
                            mean_answer_tokens=2.4)
    assert run(ctx).endswith("; speed: no change (within ±2.5%); answer length -95.0%")


def test_xp_for_a_report_uses_the_scores_not_the_reported_improvements() -> None:
    assert xp_for(TrainerStatus()) is None  # no items reported yet
    graded = TrainerStatus(train_items=100, before=GradeScores(weighted_overall=40.0),
                           after=GradeScores(weighted_overall=50.0), improvements=Improvements(quality_points=80.0))
    assert xp_for(graded) == award_xp(100, 10.0) == 300
    assert xp_for(graded.model_copy(update={"after": GradeScores()})) == award_xp(100, None) == 125
