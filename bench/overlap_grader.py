"""The builtin grader as it was before issue 16, kept as the baseline column of bench/grader_quality.py.

Why keep it: the issue asks for the old and the new grader side by side in one run, on the same labelled
answers, so that every claim about the new grader is a measured difference. The product no longer uses
it; nothing outside bench/ imports this module.

Criteria (0-100): task accuracy = share of expected keywords (or, for a reference, its 5 most frequent
content words) found in the answer; completeness = recall of the reference's content words;
correctness = mean of token F1 and ROUGE-L F1 between the stems of answer and reference; coherence as now.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from lora_trainer.grader import ItemGrade, complexity
from lora_trainer.text import content_keywords, stem, stems, words
from lora_trainer.text_metrics import coherence

DERIVED_KEYWORDS = 5


def keyword_recall(answer_stems: Sequence[str], keywords: Sequence[str]) -> float | None:
    """Share of keywords (words or phrases, stemmed) found as a contiguous run anywhere in the answer, 0-100."""
    gradable = [k for k in keywords if words(k)]
    if not gradable:
        return None
    found = 0
    for keyword in gradable:
        needle = [stem(w) for w in words(keyword)]
        width = len(needle)
        found += any(list(answer_stems[i:i + width]) == needle for i in range(len(answer_stems) - width + 1))
    return 100.0 * found / len(gradable)


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


def derive_keywords(reference: str, count: int = DERIVED_KEYWORDS) -> list[str]:
    """The reference's most frequent content words, then longest, then earliest."""
    order = content_keywords(reference)
    frequency = Counter(w for w in words(reference) if w in set(order))
    return sorted(order, key=lambda w: (-frequency[w], -len(w), order.index(w)))[:count]


class OverlapGrader:
    """Word overlap with the reference and keyword hits wherever they appear (asserted or denied)."""

    def grade(self, query: str, answer: str, reference: str | None, keywords: Sequence[str]) -> ItemGrade:
        answer_stems = stems(answer)
        completeness = correctness = None
        if reference and words(reference):
            reference_stems = stems(reference)
            completeness = keyword_recall(answer_stems, content_keywords(reference))
            correctness = 50.0 * (token_f1(answer_stems, reference_stems) + rouge_l(answer_stems, reference_stems))
            keywords = keywords or derive_keywords(reference)
        grade = ItemGrade(keyword_recall(answer_stems, keywords), completeness, correctness, coherence(answer),
                          complexity(query))
        return _Uncapped(grade)


class _Uncapped(ItemGrade):
    """Its overall was the plain mean of the criteria (the new grader caps it at correctness)."""

    def __init__(self, grade: ItemGrade) -> None:
        super().__init__(grade.task_accuracy, grade.completeness, grade.correctness, grade.coherence,
                         grade.complexity)

    @property
    def overall(self) -> float:
        values = [v for v in (self.task_accuracy, self.completeness, self.correctness, self.coherence)
                  if v is not None]
        return sum(values) / len(values)
