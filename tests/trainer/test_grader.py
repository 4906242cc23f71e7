"""THE_ANSWER grader: it must tell a right answer from a wrong, degenerate or empty one."""

from __future__ import annotations

from typing import Any

import pytest

from lora_contract.api import GenerationSettings, GraderSpec, SecretKeyRef
from lora_trainer import evaluation
from lora_trainer.errors import InvalidInput, StepError
from lora_trainer.evaluation import EvalItem
from lora_trainer.generation import Answer
from lora_trainer.grader import (
    BuiltinGrader,
    ItemGrade,
    LlmJudgeGrader,
    aggregate,
    complexity,
    derive_keywords,
    make_grader,
)
from lora_trainer.text import stem, words
from lora_trainer.text_metrics import coherence, rouge_l, token_f1
from tests.http_fakes import completion

QUERY = "What are the minion ranks?"
REFERENCE = ("Per the Minion Handbook, there are five ranks: Sprout (0 to 99 XP), Runner (100 to 499 XP), "
             "Artisan (500 to 1,499 XP), Warden (1,500 to 3,999 XP) and Luminary (4,000 XP and more).")
WRONG = "Bananas are yellow fruits that grow in tropical climates and taste sweet when ripe."
DEGENERATE = "ranks ranks ranks ranks ranks ranks ranks ranks ranks ranks ranks ranks"


def grade(answer: str, keywords: tuple[str, ...] = ()) -> ItemGrade:
    return BuiltinGrader().grade(QUERY, answer, REFERENCE, keywords)


def test_the_reference_itself_scores_full_marks() -> None:
    g = grade(REFERENCE)
    assert (g.task_accuracy, g.completeness, g.correctness) == (100.0, 100.0, 100.0)
    assert g.coherence > 90 and g.overall > 95


@pytest.mark.parametrize("answer", [WRONG, DEGENERATE, ""], ids=["wrong", "degenerate", "empty"])
def test_the_grader_tells_the_reference_from_a_bad_answer(answer: str) -> None:
    right, bad = grade(REFERENCE), grade(answer)
    assert right.overall - bad.overall > 50, (right, bad)
    assert bad.correctness is not None and bad.correctness < 25


def test_an_empty_answer_scores_zero_everywhere() -> None:
    g = grade("")
    assert (g.task_accuracy, g.completeness, g.correctness, g.coherence, g.overall) == (0, 0, 0, 0, 0)


def test_a_partial_answer_lands_between() -> None:
    partial = grade("The ranks are Sprout, Runner and Artisan.")
    assert grade(WRONG).overall < partial.overall < grade(REFERENCE).overall


def test_coherence_penalizes_repetition_garbage_and_runs() -> None:
    fluent = coherence("A Sprout becomes a Runner at one hundred XP after the next Dawn Review.")
    assert fluent == 100.0
    assert coherence("the rule is the rule is the rule is the rule is the rule") < 50
    assert coherence("\x00\x01\x02 ok \x03\x04") < 60
    # 1 of 5 word 3-grams repeats (x 0.8) and one word runs 4 times (x 0.5)
    assert coherence("no no no no, that is wrong") == pytest.approx(40.0)
    assert coherence("Yes.") < coherence("Yes, it is.")


def test_expected_keywords_drive_task_accuracy_and_match_inflections_and_phrases() -> None:
    g = BuiltinGrader().grade("How do forges work?", "Forges train minions; the Dawn Review confirms ranks.", None,
                              ("forge", "training", "dawn review", "embers"))
    assert g.task_accuracy == 75.0
    assert g.completeness is None and g.correctness is None  # no reference to compare with


def test_derived_keywords_prefer_frequent_then_long_words() -> None:
    assert derive_keywords("Embers buy forge time; embers refresh weekly at the review.", 3) == \
        ["embers", "refresh", "weekly"]


def test_overlap_measures() -> None:
    a, b = words("the cat sat on the mat"), words("the cat lay on the mat")
    assert token_f1(a, a) == rouge_l(a, a) == 1.0
    assert 0 < token_f1(a, b) < 1 and 0 < rouge_l(a, b) < 1
    assert token_f1([], b) == rouge_l(a, []) == 0.0
    assert stem("ranks") == stem("rank") and stem("trained") == stem("training") and stem("rules") == stem("rule")


@pytest.mark.parametrize(("query", "level"), [
    ("What is a minion?", 1), ("List the ranks", 1), ("Tell me a story", 1),
    ("Compare a Runner and an Artisan", 2), ("Create a Lantern", 2), ("Analyze the XP table", 2),
    ("Design a dataset and explain it", 3), ("Optimize the ember budget", 3), ("Integrate forges", 3),
])
def test_complexity_classes(query: str, level: int) -> None:
    assert complexity(query) == level


def test_weighted_overall_counts_complex_items_more() -> None:
    easy = ItemGrade(100, 100, 100, 100, complexity=1)
    hard = ItemGrade(0, 0, 0, 0, complexity=3)
    scores = aggregate([easy, hard])
    assert scores["overall"] == 50.0
    assert scores["weighted_overall"] == 25.0  # (1 x 100 + 3 x 0) / (1 + 3)
    assert aggregate([])["overall"] is None


def test_criteria_missing_for_some_items_average_over_the_others() -> None:
    scores = aggregate([ItemGrade(80, None, None, 100, 1), ItemGrade(40, 60, 50, 90, 1)])
    assert scores["task_accuracy"] == 60.0 and scores["completeness"] == 60.0 and scores["coherence"] == 95.0


# ----------------------------------------------------------------------------- LLM judge


def test_llm_judge_scores_come_from_the_endpoint(judge_server: Any) -> None:
    judge_server.reply = completion('Scores: {"taskAccuracy": 90, "completeness": 80, "correctness": 120, '
                                     '"coherence": 70}')
    g = LlmJudgeGrader(judge_server.url, "judge-1", "secret").grade("Design a forge", "An answer.", "Ref", ("forge",))
    assert (g.task_accuracy, g.completeness, g.correctness, g.coherence, g.complexity) == (90, 80, 100, 70, 3)
    request = judge_server.seen[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer secret"
    assert request["body"]["model"] == "judge-1" and request["body"]["temperature"] == 0
    assert "Ref" in request["body"]["messages"][0]["content"]


def test_llm_judge_reads_the_first_json_object_of_a_wordy_reply(judge_server: Any) -> None:
    judge_server.reply = completion('Using {rubric}: {"taskAccuracy": 60, "completeness": 50, "correctness": 40, '
                                     '"coherence": 30}. Alternative view: {"taskAccuracy": 0}')
    g = LlmJudgeGrader(judge_server.url, "judge-1", None).grade("Что такое миньон?", "Миньон — помощник.", None, ())
    assert (g.task_accuracy, g.completeness, g.correctness, g.coherence) == (60, 50, 40, 30)
    assert len(judge_server.seen) == 1  # a non-English answer is judged, not scored 0 unasked


def test_non_english_answers_are_graded_like_english_ones() -> None:
    assert words("Ça coûte 30 € ; l'élève_x") == ["ça", "coûte", "30", "l'élève", "x"]
    reference = "Миньон помогает мастеру в кузнице каждый день."
    assert BuiltinGrader().grade("Что делает миньон?", reference, reference, ()).overall > 90
    assert BuiltinGrader().grade("Что делает миньон?", "Погода хорошая.", reference, ()).overall < 50


def test_llm_judge_errors_are_clear(judge_server: Any) -> None:
    grader = LlmJudgeGrader(judge_server.url, "judge-1", None)
    judge_server.reply = completion("I think it is fine.")
    with pytest.raises(StepError, match="not the JSON scores"):
        grader.grade("q", "an answer", None, ())
    judge_server.status, judge_server.reply = 401, {"error": "bad key"}
    with pytest.raises(StepError, match=r"HTTP 401.*bad key"):
        grader.grade("q", "an answer", None, ())
    with pytest.raises(StepError, match="unreachable or timed out"):
        LlmJudgeGrader("http://127.0.0.1:9/v1", "m", None, timeout=2).grade("q", "an answer", None, ())


def test_llm_judge_does_not_call_for_an_empty_answer() -> None:
    assert LlmJudgeGrader("http://127.0.0.1:9/v1", "m", None).grade("q", "  ", None, ()).overall == 0


def test_make_grader(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(make_grader(GraderSpec()), BuiltinGrader)
    spec = GraderSpec(type="llmJudge", endpoint="http://judge/v1", model="m",
                      api_key_secret=SecretKeyRef(name="s", key="k"))
    monkeypatch.delenv("LORA_JUDGE_API_KEY", raising=False)
    with pytest.raises(InvalidInput, match="LORA_JUDGE_API_KEY"):
        make_grader(spec)
    monkeypatch.setenv("LORA_JUDGE_API_KEY", "k3y")
    judge = make_grader(spec)
    assert isinstance(judge, LlmJudgeGrader) and judge.client.api_key == "k3y"


def test_grading_discards_one_warm_up_answer_before_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[list[str], int]] = []

    def fake_generate_many(model: Any, tokenizer: Any, prompts: list[str], settings: GenerationSettings,
                           context: int, **kwargs: Any) -> list[Answer]:
        asked.append((list(prompts), settings.max_new_tokens))
        return [Answer("An answer.", 60.0 if len(asked) == 1 else 1.0, 4, 3, 3) for _ in prompts]  # warm-up: slow

    monkeypatch.setattr(evaluation, "generate_many", fake_generate_many)
    items = [EvalItem(f"query {i}", "What?", f"prompt {i}", None, ("answer",)) for i in (1, 2)]
    graded = evaluation.grade_model(None, None, items, GenerationSettings(), BuiltinGrader(), 96, seed=0)
    assert asked == [(["prompt 1"], evaluation.WARMUP_NEW_TOKENS), (["prompt 1", "prompt 2"], 128)]
    assert graded.scores.seconds_per_answer == 1.0 and graded.scores.tokens_per_second == 4.0
