"""The evaluation shared by before-metrics, validation, testing and after-metrics.

Held-out loss and perplexity over the validation split, and THE_ANSWER grades of generated
answers for the evaluation items (held-out items plus the spec's queries), built once per run so
before and after are measured on exactly the same items.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

import torch

from lora_contract.api import EvaluationSpec, GenerationSettings, GradeScores
from lora_trainer.formats import IGNORE_INDEX, Example, features, render_prompt
from lora_trainer.generation import Answer, generate_many
from lora_trainer.grader import Grader, GradeRequest, ItemGrade, aggregate, grade_many
from lora_trainer.loss import labelled_logits

LOSS_BATCH_SIZE = 4
WARMUP_NEW_TOKENS = 8


@dataclass(frozen=True)
class EvalItem:
    label: str  # "held-out handbook.jsonl:17" or "query 2"
    query: str
    prompt_text: str
    reference: str | None
    keywords: tuple[str, ...]


def eval_items(validation: Sequence[Example], evaluation: EvaluationSpec, tokenizer: Any) -> list[EvalItem]:
    """The first ``heldOutItems`` validation items that have a prompt, then the spec's queries."""
    held_out = [e for e in validation if e.prompt][: evaluation.held_out_items]
    items = [EvalItem(f"held-out {e.location}", e.query, e.prompt_text, e.completion, ()) for e in held_out]
    for i, q in enumerate(evaluation.queries, 1):
        prompt = render_prompt(tokenizer, [{"role": "user", "content": q.query}])
        items.append(EvalItem(f"query {i}", q.query, prompt, q.reference, tuple(q.expected_keywords)))
    return items


def heldout_loss(
    model: Any, examples: Sequence[Example], max_length: int, completion_only: bool
) -> tuple[float | None, float | None]:
    """Token-weighted mean cross-entropy of the answer tokens (the trained tokens) and its exp."""
    rows = [f for e in examples if (f := features(e, max_length, completion_only)) is not None]
    if not rows:
        return None, None
    rows.sort(key=lambda r: len(r["input_ids"]))  # little padding; a sum over tokens does not depend on order
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(rows), LOSS_BATCH_SIZE):
            batch = rows[start : start + LOSS_BATCH_SIZE]
            width = max(len(r["input_ids"]) for r in batch)
            ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in batch], device=device)
            labels = torch.tensor([r["labels"] + [IGNORE_INDEX] * (width - len(r["labels"])) for r in batch],
                                  device=device)
            mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch],
                                device=device)
            logits, targets = labelled_logits(model, labels, {"input_ids": ids, "attention_mask": mask})
            total += torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum").item()
            count += targets.numel()
    if count == 0:
        return None, None
    loss = total / count
    return round(loss, 6), round(math.exp(min(loss, 50.0)), 4)


@dataclass
class GradedRun:
    scores: GradeScores
    records: list[dict[str, Any]]  # one per item: query, answer, scores, seconds


def generate_answers(
    model: Any, tokenizer: Any, items: Sequence[EvalItem], generation: GenerationSettings, context: int, seed: int,
    on_answer: Callable[[int], None] | None = None,
) -> list[Answer]:
    """The items' answers, timed, in batches (``generation``); ``on_answer`` hears how many answers are done
    after each batch (generation is most of the time of the steps that grade).

    One discarded warm-up answer first: the first ``generate`` pays one-time costs (kernel selection,
    allocator growth) that would otherwise be billed to whichever model is graded first."""
    if items:
        generate_many(model, tokenizer, [items[0].prompt_text],
                      generation.model_copy(update={"max_new_tokens": WARMUP_NEW_TOKENS}), context)
    torch.manual_seed(seed)
    return generate_many(model, tokenizer, [i.prompt_text for i in items], generation, context, on_batch=on_answer)


def grade_answers(items: Sequence[EvalItem], answers: Sequence[Answer], grader: Grader) -> GradedRun:
    """``answers`` to ``items`` graded (not timed: the grader's time is not the model's), with the timings.

    Apart from generating, so that a step whose LLM judge fails can grade the same answers with the builtin
    grader instead (steps/before_metrics.py)."""
    grades = _grades(items, [a.text for a in answers], grader)
    records = [
        {"item": i.label, "query": i.query, "reference": i.reference, "answer": a.text,
         "seconds": round(a.seconds, 4), "newTokens": a.new_tokens, **g.as_json()}
        for i, a, g in zip(items, answers, grades, strict=True)
    ]
    generated_seconds = sum(a.seconds for a in answers)
    scores = GradeScores(
        **aggregate(grades),
        seconds_per_answer=round(fmean(a.seconds for a in answers), 4) if answers else None,
        tokens_per_second=round(sum(a.new_tokens for a in answers) / generated_seconds, 2)
        if generated_seconds > 0 else None,
        mean_answer_tokens=round(fmean(a.new_tokens for a in answers), 2) if answers else None,
        items=len(items),
    )
    return GradedRun(scores, records)


def regrade(items: Sequence[EvalItem], graded: GradedRun, grader: Grader) -> GradedRun:
    """``graded``'s saved answers graded anew by ``grader``; timings, loss and the rest kept. For the evaluation
    an LLM judge graded before it failed on the other one: both must have the same grader."""
    grades = _grades(items, [r["answer"] for r in graded.records], grader)
    records = [{**r, **g.as_json()} for r, g in zip(graded.records, grades, strict=True)]
    return GradedRun(graded.scores.model_copy(update=aggregate(grades)), records)


def _grades(items: Sequence[EvalItem], answers: Sequence[str], grader: Grader) -> list[ItemGrade]:
    return grade_many(grader, [GradeRequest(i.query, a, i.reference, i.keywords)
                               for i, a in zip(items, answers, strict=True)])
