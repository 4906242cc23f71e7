"""Step 7, testing: the spec's queries with their expected keywords, and edge cases that must not crash.

Edge cases: an empty user message, and a prompt several times longer than the context, which
must be truncated to fit rather than fail. Details go to ``evaluation/testing.json``.
"""

from __future__ import annotations

import json

from lora_trainer.context import RunContext
from lora_trainer.formats import render_prompt
from lora_trainer.generation import context_limit, generate_many
from lora_trainer.layout import write_atomically
from lora_trainer.text import stems, words
from lora_trainer.text_metrics import keyword_recall, missing_keywords

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
    for q, answer in zip(spec.evaluation.queries, answers, strict=True):
        answer_stems = stems(answer.text)
        missing = missing_keywords(answer_stems, q.expected_keywords)  # the grader's task-accuracy matching
        gradable = [k for k in q.expected_keywords if words(k)]
        hits += len(gradable) - len(missing)
        asked += len(gradable)
        queries.append({"query": q.query, "answer": answer.text, "missingKeywords": missing,
                        "keywordRecall": keyword_recall(answer_stems, q.expected_keywords)})

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
                     f"{hits}/{asked} expected keywords{share}")
    parts.append(f"empty prompt -> {edge['emptyPrompt']['answerWords']} words")
    parts.append(f"{long.original_prompt_tokens}-token prompt truncated to {long.prompt_tokens} -> "
                 f"{edge['longPrompt']['answerWords']} words")
    return "; ".join(parts)
