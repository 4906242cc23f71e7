"""Word-level text helpers shared by dataset refinement and the grader.

Both need the same notion of "words", "content keywords" and "repetition" so that a
dataset item the refiner scores as repetitive is also what the grader penalizes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")  # letters and digits of any script: \w without "_"
_SUFFIXES = ("ingly", "edly", "ing", "ies", "ed", "es", "ly", "s")

# Function words carry no content: they are ignored when extracting keywords.
STOPWORDS = frozenset({
    "a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any", "are", "as",
    "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could",
    "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has",
    "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in",
    "into", "is", "it", "its", "itself", "just", "let", "me", "more", "most", "my", "myself", "no", "nor",
    "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over",
    "own", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them",
    "themselves", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until",
    "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why",
    "will", "with", "would", "you", "your", "yours", "yourself", "yourselves", "per", "via", "may", "might",
    "must", "shall", "every", "one", "two", "many", "much"
})


def words(text: str) -> list[str]:
    """Lower-cased words of letters and digits in any script (apostrophe contractions kept together)."""
    return _WORD.findall(text.lower())


def stem(word: str) -> str:
    """A tiny suffix stripper: enough to match 'ranks'/'rank', 'trained'/'training', 'rule'/'rules'."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def stems(text: str) -> list[str]:
    return [stem(w) for w in words(text)]


def content_keywords(text: str) -> list[str]:
    """Distinct non-stopword words (3+ characters or numbers), in order of first appearance."""
    seen: dict[str, None] = {}
    for w in words(text):
        if w not in STOPWORDS and (len(w) >= 3 or w.isdigit()):
            seen.setdefault(w, None)
    return list(seen)


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_fraction(tokens: Sequence[str], n: int = 3) -> float:
    """Share of n-grams that repeat an earlier one: 0 for varied text, near 1 for loops."""
    grams = ngrams(tokens, n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def longest_run(tokens: Sequence[str]) -> int:
    """Length of the longest run of one token repeated back to back ('no no no no')."""
    best = run = 0
    previous = None
    for token in tokens:
        run = run + 1 if token == previous else 1
        best = max(best, run)
        previous = token
    return best


def shingles(tokens: Sequence[str], n: int = 3) -> frozenset[tuple[str, ...]]:
    """Word n-gram set for Jaccard similarity; short texts are one shingle of all words."""
    if len(tokens) < n:
        return frozenset({tuple(tokens)}) if tokens else frozenset()
    return frozenset(ngrams(tokens, n))


def jaccard(a: frozenset[tuple[str, ...]], b: frozenset[tuple[str, ...]]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
