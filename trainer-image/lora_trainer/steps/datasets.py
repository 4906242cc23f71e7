"""Step 1, datasets: read every source, convert, render with the chat template, refine, split."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from statistics import fmean
from typing import Any

from lora_contract.api import LoraTrainingJobSpec
from lora_trainer import refine
from lora_trainer.context import PreparedData, RunContext
from lora_trainer.errors import InvalidInput
from lora_trainer.formats import Example, RowError, encode, to_example
from lora_trainer.layout import write_atomically
from lora_trainer.modeling import load_tokenizer
from lora_trainer.sources import read_source

SHOWN_ERRORS = 3  # malformed-row messages quoted in the step message (all are in the stats file)


def prepare(spec: LoraTrainingJobSpec, tokenizer: Any) -> PreparedData:
    """Load and refine all datasets; raises ``InvalidInput`` when nothing usable is left."""
    rules, max_length = spec.data, spec.lora.max_length
    per_source: dict[str, Counter[str]] = defaultdict(Counter)
    errors: list[str] = []
    examples: list[Example] = []
    for index, ds in enumerate(spec.datasets):
        rows = read_source(ds, index)
        per_source[rows.label]["rows"] += len(rows.rows) + len(rows.errors)
        per_source[rows.label]["malformed"] += len(rows.errors)
        per_source[rows.label]["undecodable"] += rows.replaced
        errors.extend(rows.errors)
        for row in rows.rows:
            try:
                examples.append(to_example(row, ds.format))
            except RowError as err:
                errors.append(f"{row.location}: {err}")
                per_source[rows.label]["malformed"] += 1

    dropped: dict[str, int] = {}

    def step(items: list[Example], name: str, rule: Callable[[list[Example]], list[Example]]) -> list[Example]:
        return refine.apply_rule(items, rule, name, dropped, per_source)

    if rules.dedupe:
        examples = step(examples, "exact duplicates", refine.drop_exact_duplicates)
    examples = step(examples, "near duplicates",
                    lambda xs: refine.drop_near_duplicates(xs, rules.near_duplicate_threshold))
    examples = step(examples, "too short", lambda xs: [e for e in xs if len(e.text) >= rules.min_text_length])
    examples = step(examples, "too long", lambda xs: [e for e in xs if len(e.text) <= rules.max_text_length])
    for example in examples:
        encode(example, tokenizer)
    examples = step(examples, "prompt fills maxLength", lambda xs: [e for e in xs if len(e.prompt_ids) < max_length])
    examples = step(examples, "low quality", lambda xs: refine.drop_low_quality(xs, rules.quality_drop_fraction))
    train, validation = refine.split(examples, rules.validation_fraction, rules.seed, rules.max_items)
    dropped["over maxItems"] = len(examples) - len(train) - len(validation)
    for name, part in (("train", train), ("validation", validation)):
        for example in part:
            per_source[example.source][name] += 1

    lengths = [len(e.prompt_ids) + len(e.completion_ids) for e in examples]
    stats = {
        "rowsRead": sum(c["rows"] for c in per_source.values()),
        "malformed": len(errors),
        "undecodable": sum(c["undecodable"] for c in per_source.values()),
        "errors": errors,
        "dropped": dropped,
        "train": len(train),
        "validation": len(validation),
        "tokens": {
            "mean": round(fmean(lengths), 1) if lengths else 0,
            "max": max(lengths, default=0),
            "truncated": sum(n > max_length for n in lengths),
            "maxLength": max_length,
        },
        "sources": {label: dict(counts) for label, counts in per_source.items()},
    }
    if not train:
        raise InvalidInput(f"no usable training items: {summary(stats)}")
    return PreparedData(train, validation, stats)


def summary(stats: dict[str, Any]) -> str:
    """'212 rows from 2 sources -> 180 train / 20 validation; dropped 3 exact duplicates; ...'"""
    parts = [f"{stats['rowsRead']} rows from {len(stats['sources'])} source(s) -> "
             f"{stats['train']} train / {stats['validation']} validation"]
    drops = [f"{count} {name}" for name, count in stats["dropped"].items() if count]
    if drops:
        parts.append("dropped " + ", ".join(drops))
    if stats["tokens"]["truncated"]:
        parts.append(f"{stats['tokens']['truncated']} truncated to maxLength {stats['tokens']['maxLength']}")
    if stats["undecodable"]:
        parts.append(f"{stats['undecodable']} undecodable byte sequence(s) read as U+FFFD (files are not UTF-8)")
    if stats["malformed"]:
        shown = "; ".join(stats["errors"][:SHOWN_ERRORS])
        more = stats["malformed"] - SHOWN_ERRORS
        parts.append(f"{stats['malformed']} malformed row(s) skipped: {shown}"
                     + (f"; +{more} more" if more > 0 else ""))
    return "; ".join(parts)


def run(ctx: RunContext) -> str:
    ctx.tokenizer, notes = load_tokenizer(ctx.spec.model)
    ctx.data = prepare(ctx.spec, ctx.tokenizer)
    if ctx.world.is_main:  # the other workers of a data-parallel run prepare the same data and write nothing
        write_atomically(ctx.layout.dataset_stats, json.dumps(ctx.data.stats, indent=2))
    return "; ".join([summary(ctx.data.stats), *notes])
