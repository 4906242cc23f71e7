"""THE_ANSWER grading: task accuracy, completeness, correctness and coherence (0-100 each),
weighted by the complexity class of the query. Every formula is in docs/grading.md.

The builtin grader is deterministic and offline: it compares an answer with the reference
answer and expected keywords. ``LlmJudgeGrader`` asks an OpenAI-compatible endpoint instead.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any, Protocol

from pydantic.alias_generators import to_camel

from lora_contract.api import LLM_JUDGE_MESSAGE, GraderSpec
from lora_trainer.errors import InvalidInput, StepError
from lora_trainer.text import (
    contains_phrase,
    content_keywords,
    longest_run,
    repeated_ngram_fraction,
    stem,
    stems,
    words,
)

# The product spec's complexity classes; a query takes the highest class any of its words hits.
COMPLEXITY_CLASSES: tuple[tuple[int, tuple[str, ...]], ...] = (
    (3, ("design", "implement", "optimize", "optimise", "integrate")),
    (2, ("analyze", "analyse", "compare", "evaluate", "create")),
    (1, ("what", "explain", "define", "list")),
)
DERIVED_KEYWORDS = 5  # expected keywords taken from a reference when a held-out item has none
JUDGE_API_KEY_ENV = "LORA_JUDGE_API_KEY"
JUDGE_TIMEOUT_SECONDS = 60
_CRITERIA = ("task_accuracy", "completeness", "correctness", "coherence")
# Characters a normal answer is made of; anything else counts as garbage for coherence.
_ORDINARY = re.compile(
    r"[\w\s.,;:!?'\"()\[\]{}\-/%&+*=<>#@$"
    "\u20ac\u00a3\u00b0\u2018\u2019\u201c\u201d\u2013\u2014\u2026]"  # euro pound degree quotes dashes ellipsis
)


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


def missing_keywords(answer_stems: Sequence[str], keywords: Sequence[str]) -> list[str]:
    """The keywords (single words or phrases, stemmed) not found in the answer; wordless ones are skipped."""
    return [k for k in keywords if words(k) and not contains_phrase(answer_stems, words(k))]


def keyword_recall(answer_stems: Sequence[str], keywords: Sequence[str]) -> float | None:
    """Share of keywords (single words or phrases, stemmed) found in the answer, 0-100."""
    gradable = [k for k in keywords if words(k)]
    if not gradable:
        return None
    return 100.0 * (len(gradable) - len(missing_keywords(answer_stems, gradable))) / len(gradable)


def token_f1(candidate: Sequence[str], reference: Sequence[str]) -> float:
    common = sum((Counter(candidate) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(candidate), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def rouge_l(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """F1 of the longest common subsequence."""
    if not candidate or not reference:
        return 0.0
    previous = [0] * (len(reference) + 1)
    for c in candidate:
        current = [0]
        for j, r in enumerate(reference, 1):
            current.append(previous[j - 1] + 1 if c == r else max(previous[j], current[j - 1]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def coherence(answer: str) -> float:
    """100 x (1 - repeated 3-grams) x (1 - garbage characters) x min(1, words / 3), halved when one
    word repeats 4+ times in a row; 0 for an empty answer."""
    tokens = words(answer)
    if not tokens:
        return 0.0
    visible = [c for c in answer if not c.isspace()]
    garbage = sum(not _ORDINARY.match(c) for c in visible) / len(visible)
    score = (1 - repeated_ngram_fraction(tokens, 3)) * (1 - garbage) * min(1.0, len(tokens) / 3)
    if longest_run(tokens) >= 4:
        score *= 0.5
    return 100.0 * score


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


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (a reply may wrap it in prose or add a second one)."""
    decoder = json.JSONDecoder()
    for start in (i for i, c in enumerate(text) if c == "{"):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


class LlmJudgeGrader:
    """THE_ANSWER scores from an OpenAI-compatible chat completions endpoint (temperature 0)."""

    def __init__(self, endpoint: str, model: str, api_key: str | None, timeout: float = JUDGE_TIMEOUT_SECONDS):
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout = model, api_key, timeout

    def _ask(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "temperature": 0,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode(errors="replace")
            raise StepError(f"LLM judge {self.url} answered HTTP {err.code}: {detail}") from err
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise StepError(f"LLM judge {self.url} unreachable or timed out after {self.timeout:.0f}s: "
                            f"{getattr(err, 'reason', err)}") from err
        except json.JSONDecodeError as err:
            raise StepError(f"LLM judge {self.url} did not answer JSON: {err}") from err
        try:
            return reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            raise StepError(f"LLM judge reply has no choices[0].message.content: {str(reply)[:300]}") from err

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
        content = self._ask(prompt)
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
