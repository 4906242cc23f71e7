"""Step 7, testing: the spec's queries with their expected keywords, and edge cases that must not crash.

Edge cases: an empty user message, and a prompt several times longer than the context, which
must be truncated to fit rather than fail. Details go to ``evaluation/testing.json``.
"""

from __future__ import annotations

import json

from lora_trainer.context import RunContext
from lora_trainer.facts import Verdict
from lora_trainer.formats import render_prompt
from lora_trainer.generation import context_limit, generate_many
from lora_trainer.grader import BuiltinGrader
from lora_trainer.layout import write_atomically
from lora_trainer.text import words

LONG_PROMPT_FACTOR = 4  # the long-prompt edge case is at least this many times the context
LONG_PROMPT_SENTENCE = "Explain this in as much detail as you can."


def run(ctx: RunContext) -> str:
    spec, model, tokenizer = ctx.spec, ctx.trained_model, ctx.tokenizer
    settings, context = spec.evaluation.generation, context_limit(model, spec.lora.max_length)

    repeats = LONG_PROMPT_FACTOR * context // len(words(LONG_PROMPT_SENTENCE)) + 1  # a word is at least one token
    long_text = " ".join([LONG_PROMPT_SENTENCE] * repeats)
    texts = [q.query for q in spec.evaluation.queries] + ["", long_text]
    *answers, empty, long = generate_many(
        model, tokenizer, [render_prompt(tokenizer, [{"role": "user", "content": t}]) for t in texts], settings,
        context)

    queries, hits, asked = [], 0, 0
    grader = BuiltinGrader()
    for q, answer in zip(spec.evaluation.queries, answers, strict=True):
        # The builtin grader's keyword checks: a keyword counts where the answer asserts it, not where it
        # denies it or lists it among wrong alternatives.
        checks = [c for c in grader.explain(q.query, answer.text, None, q.expected_keywords)[1] if c.keyword]
        stated = sum(c.verdict is Verdict.SUPPORTED for c in checks)
        hits += stated
        asked += len(checks)
        queries.append({
            "query": q.query, "answer": answer.text,
            "missingKeywords": [c.fact.text for c in checks if c.verdict is Verdict.MISSING],
            "contradictedKeywords": [f"{c.fact.text} ({c.why})" for c in checks if c.verdict is Verdict.CONTRADICTED],
            "keywordRecall": round(100 * stated / len(checks), 2) if checks else None})

    edge = {
        "emptyPrompt": {"answerWords": len(words(empty.text)), "answer": empty.text},
        "longPrompt": {"promptTokens": long.original_prompt_tokens, "keptTokens": long.prompt_tokens,
                       "answerWords": len(words(long.text)), "answer": long.text},
    }
    write_atomically(ctx.layout.evaluation_record("testing"), json.dumps({"queries": queries, "edgeCases": edge},
                                                                         indent=2))
    parts = []
    if queries:
        share = f" ({100 * hits / asked:.0f}%)" if asked else ""
        parts.append(f"{len(queries)} {'query' if len(queries) == 1 else 'queries'}: "
                     f"{hits}/{asked} expected keywords asserted{share}")
    parts.append(f"empty prompt -> {edge['emptyPrompt']['answerWords']} words")
    parts.append(f"{long.original_prompt_tokens}-token prompt truncated to {long.prompt_tokens} -> "
                 f"{edge['longPrompt']['answerWords']} words")
    return "; ".join(parts)
