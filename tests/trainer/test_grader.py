"""THE_ANSWER grader: it must tell a right answer from a wrong, degenerate or empty one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from lora_contract.api import GenerationSettings, GraderSpec, SecretKeyRef
from lora_trainer import evaluation, facts
from lora_trainer.errors import InvalidInput
from lora_trainer.evaluation import EvalItem
from lora_trainer.generation import Answer
from lora_trainer.grader import (
    BuiltinGrader,
    ItemGrade,
    aggregate,
    complexity,
    make_grader,
)
from lora_trainer.judge import LlmJudgeGrader
from lora_trainer.text import words
from lora_trainer.text_metrics import coherence

QUERY = "What are the minion ranks?"
REFERENCE = ("Per the Minion Handbook, there are five ranks, from lowest to highest: Sprout (0 to 99 XP), Runner (100 "
             "to 499 XP), Artisan (500 to 1,499 XP), Warden (1,500 to 3,999 XP) and Luminary (4,000 XP and more).")
RANKS = ("Sprout", "Runner", "Artisan", "Warden", "Luminary")
WRONG = "Bananas are yellow fruits that grow in tropical climates and taste sweet when ripe."
DEGENERATE = "ranks ranks ranks ranks ranks ranks ranks ranks ranks ranks ranks ranks"
# The issue's four handbook answers (issue 16), with the handbook's own answer as the reference.
WRONG_NUMBERS = REFERENCE.replace("0 to 99", "0 to 49").replace("100 to 499", "50 to 299").replace(
    "500 to 1,499", "300 to 999").replace("1,500 to 3,999", "1,000 to 2,499").replace("4,000", "2,500")
WRONG_NAMES = REFERENCE
_SWAPPED = ("Novice", "Apprentice", "Journeyman", "Master", "Grandmaster")
for _right, _wrong in zip(RANKS, _SWAPPED, strict=True):
    WRONG_NAMES = WRONG_NAMES.replace(_right, _wrong)
PARAPHRASE = ("Minions move through five ranks. A new one is a Sprout up to 99 XP; from 100 XP it is a Runner, "
              "from 500 "
              "an Artisan, from 1,500 a Warden, and at 4,000 XP or more it becomes a Luminary.")
IN_WORDS = ("There are five ranks: Sprout from zero to ninety-nine XP, Runner from one hundred to four hundred "
            "ninety-nine, Artisan from five hundred to one thousand four hundred ninety-nine, Warden from fifteen "
            "hundred to three thousand nine hundred ninety-nine, and Luminary at four thousand XP and above.")


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
    partial = grade("The ranks start with Sprout (0 to 99 XP), then Runner (100 to 499 XP).")
    assert grade(WRONG).overall < partial.overall < grade(REFERENCE).overall
    assert partial.correctness == 100.0 and partial.completeness is not None and partial.completeness < 60


def test_the_issues_handbook_answers_rank_right_above_wrong() -> None:
    """Issue 16's table: copies with every number or every name wrong scored above a correct paraphrase."""
    wrong = [grade(WRONG_NUMBERS), grade(WRONG_NAMES)]
    right = [grade(PARAPHRASE), grade(IN_WORDS)]
    assert max(g.overall for g in wrong) < min(g.overall for g in right), (wrong, right)
    assert max(g.correctness or 0 for g in wrong) < 10 and min(g.correctness or 0 for g in right) > 90


def test_numbers_in_words_are_read_by_value() -> None:
    read_numbers = [t.value for t in facts.read(IN_WORDS).tokens if t.kind is facts.Kind.NUMBER]
    assert read_numbers == [5, 0, 99, 100, 499, 500, 1499, 1500, 3999, 4000]
    assert [t.value for t in facts.read("sixty-four forty-three; nineteen eighty-four; two, five and eight; "
                                        "twelve hundred and fifteen; 9 million; the fifteenth of June").tokens
            if t.kind is facts.Kind.NUMBER] == [6443, 1984, 2, 5, 8, 1215, 9_000_000, 15]
    assert not [t for t in facts.read("A new one is a Sprout").tokens if t.kind is facts.Kind.NUMBER]


@pytest.mark.parametrize(("answer", "why"), [
    (REFERENCE.replace("4,000 XP", "5,000 XP"), "'5,000' in its place"),
    ("The Nile is the longest river in Africa, about 4,650 kilometres long.", "'4,650' in its place"),
])
def test_one_number_wrong_is_a_contradiction_not_an_omission(answer: str, why: str) -> None:
    reference = REFERENCE if "XP" in answer else "The Nile is the longest river in Africa, about 6,650 kilometres long."
    query = QUERY if "XP" in answer else "What is the longest river in Africa?"
    g, checks = BuiltinGrader().explain(query, answer, reference, ())
    assert [c.why for c in checks if c.verdict is facts.Verdict.CONTRADICTED] == [why]
    assert g.correctness is not None and g.correctness <= 50 and g.overall <= 50


def test_entities_swapped_in_a_paraphrase_or_between_two_facts() -> None:
    q = "What is the capital of Australia?"
    reference = "Canberra is the capital of Australia; it was chosen as a compromise between Sydney and Melbourne."
    right = BuiltinGrader().grade(q, "Australia's capital is Canberra, a compromise between Sydney and Melbourne.",
                                  reference, ())
    swapped = BuiltinGrader().grade(q, reference.replace("Canberra", "@").replace("Sydney", "Canberra").replace(
        "@", "Sydney"), reference, ())
    new_name = BuiltinGrader().grade(q, "The capital of Australia is Perth, a compromise between Sydney and "
                                        "Melbourne.", reference, ())
    assert right.overall > 80 and swapped.overall < 30 and new_name.overall < 50


@pytest.mark.parametrize("answer", [
    "Per the Minion Handbook, minions have no ranks: Sprout, Runner, Artisan, Warden and Luminary are not ranks.",
    "Sprout isn't a rank, and it is a myth that Runner (100 to 499 XP) or Luminary (4,000 XP) are ranks.",
])
def test_a_negated_answer_contradicts_what_it_denies(answer: str) -> None:
    assert grade(answer).overall < 20


def test_a_phrase_negation_stays_local() -> None:
    """"has no upper limit" denies the limit, not the 4,000 XP before it."""
    g = grade("Sprout (0 to 99 XP), Runner (100 to 499 XP), Artisan (500 to 1,499 XP), Warden (1,500 to 3,999 XP); "
              "Luminary starts at 4,000 XP and has no upper limit.")
    assert g.correctness == 100.0


def test_right_values_among_wrong_alternatives_are_not_credited() -> None:
    hedged = grade("The ranks could be Sprout, Seed, Runner, Courier, Artisan, Smith, Warden, Sentinel, Luminary or "
                   "Beacon, with thresholds somewhere between 10 and 10,000 XP.")
    assert hedged.overall < 20


def test_a_rounded_number_said_to_be_approximate_states_the_fact() -> None:
    q, reference = "How high is Mount Everest?", "Mount Everest is 8,849 metres (29,032 feet) high."
    about = BuiltinGrader().grade(q, "About 8,800 metres, roughly 29,000 feet.", reference, ())
    off = BuiltinGrader().grade(q, "It is 8,800 metres, 29,000 feet.", reference, ())
    assert about.correctness == 100.0 and off.correctness is not None and off.correctness < 50


# ----------------------------------------------------------------------------- keyword-only queries


def keywords_grade(query: str, answer: str, keywords: tuple[str, ...]) -> ItemGrade:
    return BuiltinGrader().grade(query, answer, None, keywords)


def test_the_negated_ranks_answer_scores_below_30() -> None:
    g = keywords_grade(QUERY, "Not Sprout, not Runner, not Artisan, not Warden, not Luminary: there are no ranks.",
                       RANKS)
    assert g.overall < 30 and g.task_accuracy == 0


def test_a_bare_list_answers_a_list_question_but_not_an_explanation() -> None:
    ranks = keywords_grade(QUERY, "Sprout, Runner, Artisan, Warden, Luminary.", RANKS)
    assert ranks.overall > 90
    embers_keywords = ("compute credit", "40", "week", "forge")
    listed = keywords_grade("Explain what embers are.", "compute credit, 40, week, forge", embers_keywords)
    explained = keywords_grade("Explain what embers are.", "Embers are compute credit: every minion receives forty "
                               "of them each week and spends them to run forges.", embers_keywords)
    assert explained.overall > 90 and listed.overall < explained.overall - 30


def test_keywords_stuffed_among_wrong_names_or_replaced_score_low() -> None:
    stuffed = keywords_grade("What are the five mother sauces?", "They are five of béchamel, mayonnaise, velouté, "
                             "pesto, espagnole, aioli, tomato, gravy, hollandaise and vinaigrette.",
                             ("béchamel", "velouté", "espagnole", "tomato", "hollandaise"))
    one_replaced = keywords_grade(QUERY, "The ranks are Sprout, Runner, Artisan, Keeper and Luminary.", RANKS)
    wrong_number = keywords_grade("Explain what embers are.", "Embers are compute credit; each minion receives 400 "
                                  "a week and spends them on forges.", ("compute credit", "40", "week", "forge"))
    assert stuffed.overall < 30 and one_replaced.overall <= 50 and wrong_number.overall <= 50


def test_keywords_match_accents_inflections_and_phrases_in_any_order() -> None:
    g = keywords_grade("How do forges work?", "Forges train minions; the Dawn Review confirms ranks, and credit for "
                       "compute buys them.", ("forge", "training", "dawn review", "compute credit", "embers"))
    assert g.task_accuracy == 80.0 and g.completeness is None
    assert keywords_grade("Name a sauce.", "Bechamel.", ("béchamel",)).task_accuracy == 100.0


def test_coherence_penalizes_repetition_garbage_and_runs() -> None:
    fluent = coherence("A Sprout becomes a Runner at one hundred XP after the next Dawn Review.")
    assert fluent == 100.0
    assert coherence("the rule is the rule is the rule is the rule is the rule") < 50
    assert coherence("\x00\x01\x02 ok \x03\x04") < 60
    # 1 of 5 word 3-grams repeats (x 0.8) and one word runs 4 times (x 0.5)
    assert coherence("no no no no, that is wrong") == pytest.approx(40.0)
    assert coherence("Yes.") < coherence("Yes, it is.")


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


def test_non_english_answers_are_graded_like_english_ones() -> None:
    assert words("Ça coûte 30 € ; l'élève_x") == ["ça", "coûte", "30", "l'élève", "x"]
    reference = "Миньон помогает мастеру в кузнице каждый день."
    assert BuiltinGrader().grade("Что делает миньон?", reference, reference, ()).overall > 90
    assert BuiltinGrader().grade("Что делает миньон?", "Погода хорошая.", reference, ()).overall < 50


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
    answers = evaluation.generate_answers(None, None, items, GenerationSettings(), 96, seed=0)
    graded = evaluation.grade_answers(items, answers, BuiltinGrader())
    assert asked == [(["prompt 1"], evaluation.WARMUP_NEW_TOKENS), (["prompt 1", "prompt 2"], 128)]
    assert graded.scores.seconds_per_answer == 1.0 and graded.scores.tokens_per_second == 4.0


# ----------------------------------------------------------------------------- the labelled benchmark


@pytest.mark.parametrize("data", ["grader_cases.jsonl", "grader_cases_heldout.jsonl"])
def test_the_builtin_grader_on_the_labelled_benchmark(data: str) -> None:
    """Issue 16's bar, on the committed labelled answers (docs/grading.md has the full tables): pairwise
    accuracy at least 0.9, and every wrong category's mean below every correct category's mean."""
    bench = Path(__file__).resolve().parents[2] / "bench"
    spec = importlib.util.spec_from_file_location("grader_quality", bench / "grader_quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    cases = module.load_cases(bench / "data" / data)
    result = module.evaluate(cases, [BuiltinGrader().grade(c.query, c.answer, c.reference, c.keywords)
                                     for c in cases])
    assert result["pairwise_overall"] >= 0.9
    means = {k: v["mean_overall"] for k, v in result["categories"].items()}
    correct = ("correct_paraphrase", "numbers_in_words", "terse_correct", "verbose_correct")
    wrong = ("one_number_wrong", "entity_swapped", "negated", "keywords_stuffed", "off_topic", "empty_or_repeated")
    assert max(means[c] for c in wrong) < min(means[c] for c in correct), means
