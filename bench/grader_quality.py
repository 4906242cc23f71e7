"""Benchmark: how well THE_ANSWER graders tell right answers from wrong ones, on labelled answers (issue 16).

Why: measured on the handbook, the builtin grader preferred a copy of the reference with every number wrong
to a correct paraphrase, and gave 100 to an answer that denied every expected keyword. Before the grader is
replaced, it needs a yardstick that wording cannot fool. This script is that yardstick: it grades a committed
set of hand-written, hand-labelled answers with every grader in ``GRADERS`` and prints, side by side:

(a) per grader: pairwise accuracy on ``overall`` (over every pair of a correct answer, label >= 0.9, and a wrong
    answer, label <= 0.2, of the same item: the share where the correct one scores strictly higher, ties
    counting half), the same on the ``correctness`` criterion alone (pairs where both have one), and the
    Spearman rank correlation (average ranks for ties) of ``overall`` and of ``correctness`` with the labels;
(b) per answer category: the mean label and each grader's mean ``overall`` and mean ``correctness``;
(c) per wrong-answer category: each grader's pairwise accuracy against that category alone, which shows
    what kind of wrong answer a grader falls for.

Data: ``bench/data/grader_cases.jsonl``, one answer a line: ``item`` (shared by every answer to the same
question), ``domain``, ``query``, ``reference`` (or null for keyword-only items), ``keywords``, ``answer``,
``category``, ``label`` (1.0 fully correct, about 0.5 partial, 0.0 wrong) and ``note``. About 26 questions
in 8 domains with about 11 answers each, written for this benchmark; the minion handbook supplies at most a
fifth of them.

Run it in the project's environment (``source scripts/env.sh``, which installs this checkout), like the
other benches. To compare a new grader, append ``(name, grader)`` to ``GRADERS``: every table gets a
column for it.

Usage: ``python bench/grader_quality.py [--data PATH] [--json PATH]`` (seconds: the builtin grader is pure
Python and offline). Exit status 2, with the file and line on stderr, when the data file is missing or a line
is malformed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from lora_contract.api import GraderSpec
from lora_trainer.grader import Grader, ItemGrade, make_grader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overlap_grader import OverlapGrader

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_DATA = ROOT / "bench" / "data" / "grader_cases.jsonl"
CATEGORIES = (
    "correct_paraphrase", "numbers_in_words", "terse_correct", "verbose_correct", "partial",
    "one_number_wrong", "entity_swapped", "negated", "keywords_stuffed", "off_topic", "empty_or_repeated",
)
CORRECT_AT_LEAST = 0.9  # a label this high makes the answer "correct" in a pair
WRONG_AT_MOST = 0.2  # a label this low makes the answer "wrong" in a pair
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "item": str, "domain": str, "query": str, "reference": (str, type(None)), "keywords": list,
    "answer": str, "category": str, "label": (int, float), "note": str,
}


class DataError(Exception):
    """The data file is missing or a line of it is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Case:
    line: int
    item: str
    domain: str
    query: str
    reference: str | None
    keywords: tuple[str, ...]
    answer: str
    category: str
    label: float
    note: str


def _case(row: Any, where: str, line: int) -> Case:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in _FIELDS if k not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
    for key, kind in _FIELDS.items():
        if not isinstance(row[key], kind) or isinstance(row[key], bool):
            raise DataError(f"{where}: field {key!r} has the wrong type ({type(row[key]).__name__})")
    if not all(isinstance(k, str) and k.strip() for k in row["keywords"]):
        raise DataError(f"{where}: 'keywords' must be a list of non-empty strings")
    if row["category"] not in CATEGORIES:
        raise DataError(f"{where}: unknown category {row['category']!r} (one of {', '.join(CATEGORIES)})")
    label = float(row["label"])
    if not 0.0 <= label <= 1.0:
        raise DataError(f"{where}: label {label} is outside [0, 1]")
    if row["reference"] is None and not row["keywords"]:
        raise DataError(f"{where}: a case needs a reference or keywords")
    return Case(line, row["item"], row["domain"], row["query"], row["reference"], tuple(row["keywords"]),
                row["answer"], row["category"], label, row["note"])


def load_cases(path: Path) -> list[Case]:
    """Every line of the JSONL file as a Case; answers of one item must share query, reference and keywords."""
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    cases: list[Case] = []
    first_of_item: dict[str, Case] = {}
    with path.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, 1):
            if not text.strip():
                continue
            where = f"{path}:{line}"
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg}, column {err.colno})") from err
            case = _case(row, where, line)
            first = first_of_item.setdefault(case.item, case)
            if (case.query, case.reference, case.keywords) != (first.query, first.reference, first.keywords):
                raise DataError(f"{where}: item {case.item!r} has another query, reference or keywords than on "
                                f"line {first.line}")
            cases.append(case)
    if not cases:
        raise DataError(f"{path}: no cases")
    return cases


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation of the average ranks; None when fewer than 2 values or one side is constant."""
    if len(xs) != len(ys) or len(xs) < 2:
        return None
    rx, ry = average_ranks(xs), average_ranks(ys)
    mx, my = fmean(rx), fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return None if sx == 0 or sy == 0 else cov / (sx * sy)


def pairs(cases: Sequence[Case]) -> list[tuple[int, int]]:
    """(correct, wrong) index pairs of answers to the same item."""
    out: list[tuple[int, int]] = []
    for i, right in enumerate(cases):
        if right.label < CORRECT_AT_LEAST:
            continue
        out += [(i, j) for j, wrong in enumerate(cases) if wrong.item == right.item and wrong.label <= WRONG_AT_MOST]
    return out


def pairwise_accuracy(
    index_pairs: Sequence[tuple[int, int]], scores: Sequence[float | None]
) -> tuple[float | None, int]:
    """Share of pairs where the correct answer scores strictly higher (ties half), over pairs scored on both sides."""
    won = total = 0.0
    for i, j in index_pairs:
        a, b = scores[i], scores[j]
        if a is None or b is None:
            continue
        total += 1
        won += 1.0 if a > b else 0.5 if a == b else 0.0
    return (won / total if total else None), int(total)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def _spearman_present(scores: Sequence[float | None], labels: Sequence[float]) -> tuple[float | None, int]:
    kept = [(s, y) for s, y in zip(scores, labels, strict=True) if s is not None]
    return spearman([s for s, _ in kept], [y for _, y in kept]), len(kept)


def evaluate(cases: Sequence[Case], grades: Sequence[ItemGrade]) -> dict[str, Any]:
    """Every figure of the tables for one grader."""
    overall = [g.overall for g in grades]
    correctness = [g.correctness for g in grades]
    labels = [c.label for c in cases]
    all_pairs = pairs(cases)
    acc_overall, n_overall = pairwise_accuracy(all_pairs, overall)
    acc_correct, n_correct = pairwise_accuracy(all_pairs, correctness)
    rho_overall, _ = _spearman_present(overall, labels)
    rho_correct, n_rho_correct = _spearman_present(correctness, labels)
    categories: dict[str, dict[str, Any]] = {}
    for category in CATEGORIES:
        idx = [i for i, c in enumerate(cases) if c.category == category]
        categories[category] = {
            "n": len(idx),
            "mean_label": _mean([labels[i] for i in idx]),
            "mean_overall": _mean([overall[i] for i in idx]),
            "mean_correctness": _mean([correctness[i] for i in idx]),
        }
    by_wrong: dict[str, dict[str, Any]] = {}
    for category in CATEGORIES:
        subset = [(i, j) for i, j in all_pairs if cases[j].category == category]
        if subset:
            accuracy, count = pairwise_accuracy(subset, overall)
            by_wrong[category] = {"pairwise_overall": accuracy, "pairs": count}
    return {
        "pairwise_overall": acc_overall, "pairs_overall": n_overall,
        "pairwise_correctness": acc_correct, "pairs_correctness": n_correct,
        "spearman_overall": rho_overall, "spearman_correctness": rho_correct,
        "cases_with_correctness": n_rho_correct,
        "categories": categories, "pairwise_by_wrong_category": by_wrong,
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    align = ["---" if k < numeric_from else "--:" for k in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(cases: Sequence[Case], results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    items = {c.item for c in cases}
    keyword_only = {c.item for c in cases if c.reference is None}
    domains = sorted({c.domain for c in cases})
    out = [f"{len(cases)} labelled answers, {len(items)} items ({len(keyword_only)} keyword-only), "
           f"{len(domains)} domains: {', '.join(domains)}. Correct: label >= {CORRECT_AT_LEAST}; "
           f"wrong: label <= {WRONG_AT_MOST}.", ""]

    metrics: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("pairwise accuracy, overall", lambda r: f"{_fmt(r['pairwise_overall'])} ({r['pairs_overall']} pairs)"),
        ("pairwise accuracy, correctness",
         lambda r: f"{_fmt(r['pairwise_correctness'])} ({r['pairs_correctness']} pairs)"),
        ("Spearman, overall vs label", lambda r: _fmt(r["spearman_overall"])),
        ("Spearman, correctness vs label",
         lambda r: f"{_fmt(r['spearman_correctness'])} ({r['cases_with_correctness']} answers)"),
    ]
    out += ["(a) Ranking quality", "",
            _table(["metric", *names], [[m, *(f(results[n]) for n in names)] for m, f in metrics]), ""]

    header = ["category", "n", "mean label"]
    for name in names:
        header += [f"{name}: overall", f"{name}: correctness"]
    rows: list[list[str]] = []
    for category in CATEGORIES:
        first = results[names[0]]["categories"][category]
        row = [category, str(first["n"]), _fmt(first["mean_label"], 2)]
        for name in names:
            figures = results[name]["categories"][category]
            row += [_fmt(figures["mean_overall"], 1), _fmt(figures["mean_correctness"], 1)]
        rows.append(row)
    out += ["(b) Mean score per category (0-100; labels 0-1)", "", _table(header, rows), ""]

    wrong_categories = [c for c in CATEGORIES if any(c in results[n]["pairwise_by_wrong_category"] for n in names)]
    rows = []
    for category in wrong_categories:
        row = [category, str(results[names[0]]["pairwise_by_wrong_category"].get(category, {}).get("pairs", 0))]
        row += [_fmt(results[n]["pairwise_by_wrong_category"].get(category, {}).get("pairwise_overall"))
                for n in names]
        rows.append(row)
    out += ["(c) Pairwise accuracy on overall, by the wrong answer's category", "",
            _table(["wrong answer category", "pairs", *names], rows)]
    return "\n".join(out)


def graders() -> list[tuple[str, Grader]]:
    """The graders compared, one column each: the overlap grader the product used before issue 16, and the
    builtin grader as the product makes it now; append another here."""
    return [("overlap (old)", OverlapGrader()),
            ("facts (builtin)", make_grader(GraderSpec.model_validate({"type": "builtin"})))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled cases (JSONL)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    try:
        cases = load_cases(args.data)
    except (DataError, OSError, UnicodeDecodeError) as err:
        print(f"grader_quality: {err}", file=sys.stderr)
        return 2
    results: dict[str, dict[str, Any]] = {}
    for name, grader in graders():
        grades = [grader.grade(c.query, c.answer, c.reference, c.keywords) for c in cases]
        results[name] = evaluate(cases, grades)
    print(render(cases, results))
    if args.json:
        payload = {"data": str(args.data), "cases": len(cases), "items": len({c.item for c in cases}),
                   "correct_at_least": CORRECT_AT_LEAST, "wrong_at_most": WRONG_AT_MOST, "graders": results}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
