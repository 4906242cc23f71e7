"""THE_ANSWER grading: task accuracy, completeness, correctness and coherence (0-100 each),
weighted by the complexity class of the query. Every formula is in docs/grading.md.

The builtin grader is deterministic and offline: it compares an answer with the reference
answer and expected keywords (the scores are in text_metrics.py). ``LlmJudgeGrader`` asks an
OpenAI-compatible endpoint instead (the HTTP client is in judge_client.py).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Protocol

from pydantic.alias_generators import to_camel

from lora_contract.api import LLM_JUDGE_MESSAGE, GraderSpec
from lora_trainer.errors import InvalidInput, StepError
from lora_trainer.judge_client import JUDGE_TIMEOUT_SECONDS, JudgeClient, first_json_object
from lora_trainer.text import content_keywords, stem, stems, words
from lora_trainer.text_metrics import coherence, keyword_recall, rouge_l, token_f1

# The product spec's complexity classes; a query takes the highest class any of its words hits.
COMPLEXITY_CLASSES: tuple[tuple[int, tuple[str, ...]], ...] = (
    (3, ("design", "implement", "optimize", "optimise", "integrate")),
    (2, ("analyze", "analyse", "compare", "evaluate", "create")),
    (1, ("what", "explain", "define", "list")),
)
DERIVED_KEYWORDS = 5  # expected keywords taken from a reference when a held-out item has none
JUDGE_API_KEY_ENV = "LORA_JUDGE_API_KEY"
_CRITERIA = ("task_accuracy", "completeness", "correctness", "coherence")


@dataclass(frozen=True)
class ItemGrade:
    task_accuracy: float | None
    completeness: float | None
    correctness: float | None
    coherence: float
    complexity: int

    @property
    def overall(self) -> float:
        """Mean of the criteria this item could be graded on."""
        return fmean(v for v in (getattr(self, c) for c in _CRITERIA) if v is not None)

    def as_json(self) -> dict[str, float | int | None]:
        """camelCase, like GradeScores on the wire."""
        values = {c: getattr(self, c) for c in _CRITERIA}
        return {**{to_camel(c): None if v is None else round(v, 2) for c, v in values.items()},
                "overall": round(self.overall, 2), "complexity": self.complexity}


class Grader(Protocol):
    def grade(self, query: str, answer: str, reference: str | None, keywords: Sequence[str]) -> ItemGrade: ...


def complexity(query: str) -> int:
    """3 (design/implement/optimize/integrate), 2 (analyze/compare/evaluate/create), else 1."""
    query_stems = set(stems(query))
    for multiplier, verbs in COMPLEXITY_CLASSES:
        if any(stem(v) in query_stems for v in verbs):
            return multiplier
    return 1


def derive_keywords(reference: str, count: int = DERIVED_KEYWORDS) -> list[str]:
    """The reference's most telling content words: most frequent, then longest, then earliest."""
    order = content_keywords(reference)
    frequency = Counter(w for w in words(reference) if w in set(order))
    ranked = sorted(order, key=lambda w: (-frequency[w], -len(w), order.index(w)))
    return ranked[:count]


class BuiltinGrader:
    """Deterministic, offline: overlap with the reference and keyword hits (docs/grading.md)."""

    def grade(self, query: str, answer: str, reference: str | None, keywords: Sequence[str]) -> ItemGrade:
        answer_stems = stems(answer)
        completeness = correctness = None
        if reference and words(reference):
            reference_stems = stems(reference)
            completeness = keyword_recall(answer_stems, content_keywords(reference))
            correctness = 50.0 * (token_f1(answer_stems, reference_stems) + rouge_l(answer_stems, reference_stems))
            keywords = keywords or derive_keywords(reference)
        return ItemGrade(
            task_accuracy=keyword_recall(answer_stems, keywords),
            completeness=completeness,
            correctness=correctness,
            coherence=coherence(answer),
            complexity=complexity(query),
        )


_JUDGE_PROMPT = """You grade one answer of an AI assistant. Score each criterion from 0 to 100:
taskAccuracy: did the answer do what the query asked{keywords_hint}?
completeness: did it address every part of the task?
correctness: is the information accurate{reference_hint}?
coherence: is it coherent and well structured (repetition, gibberish and empty answers score low)?
Reply with only a JSON object: {{"taskAccuracy": n, "completeness": n, "correctness": n, "coherence": n}}

Query:
{query}
{reference_block}
Answer:
{answer}"""


class LlmJudgeGrader:
    """THE_ANSWER scores from an OpenAI-compatible chat completions endpoint (temperature 0)."""

    def __init__(self, endpoint: str, model: str, api_key: str | None, timeout: float = JUDGE_TIMEOUT_SECONDS):
        self.client = JudgeClient(endpoint, model, api_key, timeout)

    def grade(self, query: str, answer: str, reference: str | None, keywords: Sequence[str]) -> ItemGrade:
        level = complexity(query)
        if not words(answer):  # nothing to judge: spare the call
            return ItemGrade(0.0, 0.0, 0.0, 0.0, level)
        prompt = _JUDGE_PROMPT.format(
            query=query, answer=answer,
            keywords_hint=f" (a good answer mentions: {', '.join(keywords)})" if keywords else "",
            reference_hint=" compared with the reference answer" if reference else "",
            reference_block=f"\nReference answer:\n{reference}\n" if reference else "",
        )
        content = self.client.ask(prompt)
        scores = first_json_object(content)
        try:
            values = [float(scores[k]) for k in ("taskAccuracy", "completeness", "correctness", "coherence")]
        except (KeyError, TypeError, ValueError) as err:
            raise StepError(f"LLM judge reply is not the JSON scores asked for: {content[:300]!r}") from err
        task, complete, correct, coherent = (min(100.0, max(0.0, v)) for v in values)
        return ItemGrade(task, complete, correct, coherent, level)


def make_grader(spec: GraderSpec) -> Grader:
    if spec.type == "builtin":
        return BuiltinGrader()
    api_key = os.environ.get(JUDGE_API_KEY_ENV)
    if spec.api_key_secret and not api_key:
        raise InvalidInput(f"grader.apiKeySecret is set but ${JUDGE_API_KEY_ENV} is empty")
    if not (spec.endpoint and spec.model):  # GraderSpec checks this too; here it narrows the types
        raise InvalidInput(LLM_JUDGE_MESSAGE)
    return LlmJudgeGrader(spec.endpoint, spec.model, api_key)


def aggregate(grades: Sequence[ItemGrade]) -> dict[str, float | None]:
    """Per-criterion means (over items graded on it), the mean overall and the complexity-weighted
    overall: sum(multiplier x overall) / sum(multiplier)."""
    out: dict[str, float | None] = {}
    for criterion in _CRITERIA:
        values = [v for g in grades if (v := getattr(g, criterion)) is not None]
        out[criterion] = round(fmean(values), 2) if values else None
    if grades:
        out["overall"] = round(fmean(g.overall for g in grades), 2)
        weight = sum(g.complexity for g in grades)
        out["weighted_overall"] = round(sum(g.complexity * g.overall for g in grades) / weight, 2)
    else:
        out["overall"] = out["weighted_overall"] = None
    return out
