"""THE_ANSWER grading: task accuracy, completeness, correctness and coherence (0-100 each),
weighted by the complexity class of the query. Every formula is in docs/grading.md.

The builtin grader is deterministic and offline: it checks the facts of the reference answer, or
the expected keywords, in the answer (facts.py), and scores the four criteria from those checks;
coherence comes from text_metrics.py. The LLM judge asks an
OpenAI-compatible endpoint instead (judge.py); ``make_grader`` picks one from the spec.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any, NamedTuple, Protocol, runtime_checkable

from pydantic.alias_generators import to_camel

from lora_contract.api import LLM_JUDGE_MESSAGE, GraderSpec
from lora_trainer.errors import InvalidInput
from lora_trainer.facts import Check, Verdict, check, classify_entities, fold, is_bare_list, keyword_checks, read
from lora_trainer.text import stem, stems, words
from lora_trainer.text_metrics import coherence

# The product spec's complexity classes; a query takes the highest class any of its words hits.
COMPLEXITY_CLASSES: tuple[tuple[int, tuple[str, ...]], ...] = (
    (3, ("design", "implement", "optimize", "optimise", "integrate")),
    (2, ("analyze", "analyse", "compare", "evaluate", "create")),
    (1, ("what", "explain", "define", "list")),
)
# A contradicted fact multiplies correctness by this: one wrong number caps an answer at half marks.
CONTRADICTION_FACTOR = 0.5
# Fact weight (a number or name weighs 2, a key term 1) an answer must state to earn full correctness;
# below it correctness scales down, so saying nothing checkable is not "accurate". For keyword-only items:
# keywords (1 each).
EVIDENCE_WEIGHT = 4.0
KEYWORD_EVIDENCE = 2.0
# Share of the credit a bare list of keywords (no sentence) earns when the query asks for an explanation.
BARE_LIST_CREDIT = 0.5
_EXPLAIN_WORDS = frozenset({"explain", "describe", "why", "define", "definition", "meaning", "mean"})
_HOW_QUANTITY = frozenset({"many", "much", "long", "far", "old", "big", "large", "tall", "high", "deep", "often",
                           "fast", "heavy", "hot", "cold", "wide", "small"})
JUDGE_API_KEY_ENV = "LORA_JUDGE_API_KEY"
_CRITERIA = ("task_accuracy", "completeness", "correctness", "coherence")


@dataclass(frozen=True)
class ItemGrade:
    task_accuracy: float | None
    completeness: float | None
    correctness: float | None
    coherence: float
    complexity: int
    # What the answer got wrong or left out ("4,000: contradicted ('5,000' in its place)"), so a score in
    # OUTPUT/evaluation/*.json can be read; the builtin grader fills it.
    findings: tuple[str, ...] = ()

    @property
    def overall(self) -> float:
        """Mean of the criteria this item could be graded on, capped at its correctness: fluency and
        coverage cannot make up for what an answer gets wrong."""
        mean = fmean(v for v in (getattr(self, c) for c in _CRITERIA) if v is not None)
        return mean if self.correctness is None else min(mean, self.correctness)

    def as_json(self) -> dict[str, Any]:
        """camelCase, like GradeScores on the wire."""
        values = {c: getattr(self, c) for c in _CRITERIA}
        out: dict[str, Any] = {**{to_camel(c): None if v is None else round(v, 2) for c, v in values.items()},
                               "overall": round(self.overall, 2), "complexity": self.complexity}
        if self.findings:
            out["findings"] = list(self.findings)
        return out


class GradeRequest(NamedTuple):
    """One answer to grade, in the order of ``Grader.grade``'s arguments."""

    query: str
    answer: str
    reference: str | None
    keywords: Sequence[str]


class Grader(Protocol):
    def grade(self, query: str, answer: str, reference: str | None, keywords: Sequence[str]) -> ItemGrade: ...


@runtime_checkable
class BatchGrader(Grader, Protocol):
    """A grader with a faster way through many answers than one at a time (the judge: parallel requests)."""

    def grade_many(self, requests: Sequence[GradeRequest]) -> list[ItemGrade]: ...


def grade_many(grader: Grader, requests: Sequence[GradeRequest]) -> list[ItemGrade]:
    """The grades of ``requests``, in their order: the grader's own batch where it has one, else a loop."""
    if isinstance(grader, BatchGrader):
        return grader.grade_many(requests)
    return [grader.grade(*request) for request in requests]


def complexity(query: str) -> int:
    """3 (design/implement/optimize/integrate), 2 (analyze/compare/evaluate/create), else 1."""
    query_stems = set(stems(query))
    for multiplier, verbs in COMPLEXITY_CLASSES:
        if any(stem(v) in query_stems for v in verbs):
            return multiplier
    return 1


def _correctness(checks: Sequence[Check], evidence_floor: float) -> float:
    """Correctness 0-100 of fact checks (docs/grading.md): the share of stated facts that are right, halved
    for every fact contradicted (one wrong number makes an answer unreliable however much else it copies),
    and scaled down while the answer states less than ``evidence_floor`` weight of facts (an answer that
    says nothing checkable is not "accurate")."""
    supported = sum(c.weight for c in checks if c.verdict is Verdict.SUPPORTED)
    contradicted = [c for c in checks if c.verdict is Verdict.CONTRADICTED]
    if supported == 0:
        return 0.0
    precision = supported / (supported + sum(c.weight for c in contradicted))
    evidence = min(1.0, supported / evidence_floor) if evidence_floor else 1.0
    return 100.0 * precision * CONTRADICTION_FACTOR ** len(contradicted) * evidence


def _share(checks: Sequence[Check], supported_factor: float = 1.0) -> float | None:
    """100 x (supported - contradicted weight) / total weight, at least 0; None without facts."""
    total = sum(c.weight for c in checks)
    if total == 0:
        return None
    good = supported_factor * sum(c.weight for c in checks if c.verdict is Verdict.SUPPORTED)
    bad = sum(c.weight for c in checks if c.verdict is Verdict.CONTRADICTED)
    return 100.0 * max(0.0, good - bad) / total


def asks_for_explanation(query: str) -> bool:
    """Explain/describe/why/how-does/what-is questions want statements; "which", "what are", "list" and
    "how many" questions are answered by names or numbers."""
    lowered = [fold(w) for w in words(query)]
    for i, w in enumerate(lowered):
        following = lowered[i + 1] if i + 1 < len(lowered) else ""
        if w in _EXPLAIN_WORDS or (w == "how" and following not in _HOW_QUANTITY) or (
                w == "what" and following in ("is", "does", "do", "was")):
            return True
    return False


class BuiltinGrader:
    """Deterministic, offline: checks the reference's facts, or the expected keywords, in the answer
    (facts.py) and scores the four criteria from those checks (docs/grading.md)."""

    def grade(self, query: str, answer: str, reference: str | None, keywords: Sequence[str]) -> ItemGrade:
        return self.explain(query, answer, reference, keywords)[0]

    def explain(self, query: str, answer: str, reference: str | None,
                keywords: Sequence[str]) -> tuple[ItemGrade, list[Check]]:
        """The grade and the fact checks behind it (the evaluation records keep them, so a user can see
        which fact an answer got wrong)."""
        q, a = read(query), read(answer)
        r = read(reference) if reference and words(reference) else None
        classify_entities([q, a, r] if r else [q, a])
        query_keys = {t.key for t in q.tokens if t.kind is not None}
        level = complexity(query)
        keyword_list = [k for k in keywords if words(k)]
        if not words(answer):
            empty = 0.0 if r or keyword_list else None
            return ItemGrade(empty, empty, empty, 0.0, level), []
        listed = keyword_checks(keyword_list, a, query_keys) if keyword_list else []
        # A bare list of the right names answers "what are ...?" but explains nothing: "named, not explained".
        named_only = BARE_LIST_CREDIT if is_bare_list(a) and asks_for_explanation(query) else 1.0
        task = _share(listed, named_only) if listed else None
        completeness = correctness = None
        checks = list(listed)
        if r is not None:
            facts = check(r, a, query_keys)
            checks += facts
            if facts:
                core = [c for c in facts if c.core] or facts
                task = _share([*core, *listed])
                completeness = _share(facts)
                total = sum(c.weight for c in facts)
                correctness = _correctness(checks, min(EVIDENCE_WEIGHT, total))
        elif listed:
            total = sum(c.weight for c in listed)
            correctness = named_only * _correctness(listed, min(KEYWORD_EVIDENCE, total))
        findings = tuple(f"{c.fact.text}: {c.verdict.value}" + (f" ({c.why})" if c.verdict is Verdict.CONTRADICTED
                                                                 else "")
                         for c in checks if c.verdict is not Verdict.SUPPORTED)
        return ItemGrade(task, completeness, correctness, coherence(answer), level, findings), checks


def make_grader(spec: GraderSpec) -> Grader:
    if spec.type == "builtin":
        return BuiltinGrader()
    # Imported here: judge.py builds on this module (ItemGrade, complexity, GradeRequest).
    from lora_trainer.judge import JudgeClient, LlmJudgeGrader

    api_key = os.environ.get(JUDGE_API_KEY_ENV)
    if spec.api_key_secret and not api_key:
        raise InvalidInput(f"grader.apiKeySecret is set but ${JUDGE_API_KEY_ENV} is empty")
    if not (spec.endpoint and spec.model):  # GraderSpec checks this too; here it narrows the types
        raise InvalidInput(LLM_JUDGE_MESSAGE)
    client = JudgeClient(spec.endpoint, spec.model, api_key, spec.timeout_seconds, spec.max_retries)
    return LlmJudgeGrader(client, spec.concurrency)


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
