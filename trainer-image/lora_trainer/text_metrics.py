"""Coherence of one text, pure and offline: repetition, garbage characters, runs of one word.

The builtin grader's coherence criterion (docs/grading.md); the fact checks of the other three
criteria are in facts.py.
"""

from __future__ import annotations

import re

from lora_trainer.text import longest_run, repeated_ngram_fraction, words

# Characters a normal answer is made of; anything else counts as garbage for coherence.
_ORDINARY = re.compile(
    r"[\w\s.,;:!?'\"()\[\]{}\-/%&+*=<>#@$"
    "\u20ac\u00a3\u00b0\u2018\u2019\u201c\u201d\u2013\u2014\u2026]"  # euro pound degree quotes dashes ellipsis
)


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
