"""Scores of one text, pure and offline: keyword recall, overlap with a reference, coherence.

The builtin grader builds THE_ANSWER criteria from these (docs/grading.md); step 7 reports the
same keyword matching for the spec's queries, so both agree on what counts as a keyword hit.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from lora_trainer.text import contains_phrase, longest_run, repeated_ngram_fraction, words

# Characters a normal answer is made of; anything else counts as garbage for coherence.
_ORDINARY = re.compile(
    r"[\w\s.,;:!?'\"()\[\]{}\-/%&+*=<>#@$"
    "\u20ac\u00a3\u00b0\u2018\u2019\u201c\u201d\u2013\u2014\u2026]"  # euro pound degree quotes dashes ellipsis
)


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
