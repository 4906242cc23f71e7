"""Step 0, before-metrics: load the base model, grade it on the evaluation items, held-out loss.

It runs after step 1, whose validation split it grades on (docs/trainer.md), and before step 2
wraps the model it loaded in LoRA, so the base model is measured untouched. The result is kept in
``evaluation/before.json``: a restarted pod reuses it for the same items and model.

``measure`` is step 8's too, and so is its rule for an LLM judge that fails (``JudgeUnavailable``):
before and after are graded by the same grader, or the step fails (docs/grading.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import huggingface_hub
import torch

from lora_contract.api import GradeScores
from lora_contract.progress import MetricsEvent
from lora_trainer.context import RunContext, digest
from lora_trainer.errors import StepError
from lora_trainer.evaluation import GradedRun, eval_items, generate_answers, grade_answers, heldout_loss, regrade
from lora_trainer.events import format_duration
from lora_trainer.generation import context_limit
from lora_trainer.grader import make_grader
from lora_trainer.growth import reporting_growth
from lora_trainer.judge import JudgeUnavailable
from lora_trainer.layout import write_atomically
from lora_trainer.modeling import load_model, resolve_source
from lora_trainer.profiles import check_requested_gpus
from lora_trainer.speed import bench_scores, measure_speed


def measure(ctx: RunContext, model: Any, which: str, loss: tuple[float | None, float | None],
            key: str | None = None) -> GradeScores:
    """Grade ``model`` on ``ctx.items`` with ``loss`` beside it; answers go to evaluation/<which>.json."""
    spec = ctx.spec
    context = context_limit(model, spec.lora.max_length)
    answers = generate_answers(model, ctx.tokenizer, ctx.items, spec.evaluation.generation, context, spec.lora.seed,
                               lambda done: ctx.note(f"{which}-metrics", f"{done}/{len(ctx.items)} answers generated"))
    bench = measure_speed(model, ctx.tokenizer, [i.prompt_text for i in ctx.items], context,
                          on_start=lambda message: ctx.note(f"{which}-metrics", message))
    try:
        graded = grade_answers(ctx.items, answers, ctx.grader_in_use)
    except JudgeUnavailable as err:
        _judge_unavailable(ctx, which, err)
        graded = grade_answers(ctx.items, answers, ctx.grader_in_use)
    scores = graded.scores.model_copy(update={"eval_loss": loss[0], "perplexity": loss[1],
                                              "grader": ctx.grader_type, **bench_scores(bench)})
    _save(ctx, which, key, GradedRun(scores, graded.records))
    return scores


def _save(ctx: RunContext, which: str, key: str | None, graded: GradedRun) -> None:
    ctx.layout.evaluation.mkdir(exist_ok=True)
    record = {"key": key, "scores": graded.scores.model_dump(mode="json", by_alias=True), "answers": graded.records}
    write_atomically(ctx.layout.evaluation_record(which), json.dumps(record, indent=2))


def _judge_unavailable(ctx: RunContext, which: str, err: JudgeUnavailable) -> None:
    """The LLM judge could not grade an answer of step ``which``. ``onUnavailable: fail`` fails the step
    (exit code 1: the pod's retry may find the judge back). ``fallback`` hands the rest of the run to the
    builtin grader and, when the judge already graded before-metrics, regrades before.json's saved answers
    with it, so that improvements never compare scores of two graders."""
    if ctx.spec.evaluation.grader.on_unavailable == "fail":
        raise StepError(f"{err} (evaluation.grader.onUnavailable: fail)") from err
    judged = ctx.before is not None and ctx.before.grader == "llmJudge"
    ctx.fall_back_to_builtin(f"the LLM judge was unavailable in {which}-metrics"
                             + (", so before-metrics was regraded from its saved answers" if judged else "")
                             + f" ({err})")
    if judged:
        path = ctx.layout.evaluation_record("before")
        record = json.loads(path.read_text())
        saved = GradedRun(GradeScores.model_validate(record["scores"]), record["answers"])
        before = regrade(ctx.items, saved, ctx.grader_in_use)
        ctx.before = before.scores.model_copy(update={"grader": ctx.grader_type})
        _save(ctx, "before", record["key"], GradedRun(ctx.before, before.records))
        ctx.emit(MetricsEvent(which="before", scores=ctx.before))


def describe(scores: GradeScores, model: str) -> str:
    if not scores.items:
        graded = "nothing to grade (no held-out item with a prompt, no queries)"
    else:
        graded = (f"overall {scores.overall:.1f} (complexity-weighted {scores.weighted_overall:.1f}) on "
                  f"{scores.items} items, {scores.seconds_per_answer:.2f}s per answer")
    if scores.bench_tokens_per_second is not None:
        graded += f"; speed {scores.bench_tokens_per_second:.1f} tokens/s (±{scores.bench_noise_percent or 0:.1f}%)"
    loss = f"held-out loss {scores.eval_loss:.4f} (perplexity {scores.perplexity:.2f})" \
        if scores.eval_loss is not None else "no held-out loss (empty validation split)"
    return f"{model}: {graded}; {loss}"


def _cache_key(ctx: RunContext, model: Any) -> str:
    """Same items, model and hardware: timings from another device or precision are not comparable."""
    spec, parameter = ctx.spec, next(model.parameters())
    return digest({"model": spec.model.model_dump(mode="json"), "evaluation": spec.evaluation.model_dump(mode="json"),
                   "items": [asdict(i) for i in ctx.items], "maxLength": spec.lora.max_length,
                   "device": str(parameter.device), "dtype": str(ctx.dtype), "quantized": ctx.quantized,
                   "completionOnly": spec.lora.completion_only_loss,
                   "validation": [e.location for e in ctx.dataset.validation]})


def _cached(path: Path, key: str) -> GradeScores | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return GradeScores.model_validate(record["scores"]) if record.get("key") == key else None


def run(ctx: RunContext) -> str:
    spec, data = ctx.spec, ctx.dataset
    cpu_note = check_requested_gpus(spec.resources, torch.cuda.device_count())  # before the model's download
    started = time.monotonic()
    with reporting_growth(Path(huggingface_hub.constants.HF_HUB_CACHE), "loading the base model",
                          lambda message: ctx.note("before-metrics", message)):
        ctx.loaded = load_model(spec.model, ctx.dtype, ctx.evaluation_placement)
    ctx.quantized = ctx.loaded.quantized
    loaded = f"loaded {resolve_source(spec.model).describe()} in {format_duration(time.monotonic() - started)}"
    ctx.grader = make_grader(spec.evaluation.grader)
    ctx.items = eval_items(data.validation, spec.evaluation, ctx.tokenizer)
    model = ctx.loaded.model
    key = _cache_key(ctx, model)
    scores = _cached(ctx.layout.evaluation_record("before"), key)
    note = "reused from a previous attempt" if scores else ""
    if scores and scores.grader == "builtin" and ctx.grader_type == "llmJudge":  # as that attempt graded after
        ctx.fall_back_to_builtin("the LLM judge was unavailable in a previous attempt")
    if scores is None:
        loss = heldout_loss(model, data.validation, spec.lora.max_length, spec.lora.completion_only_loss)
        scores = measure(ctx, model, "before", loss, key)
    ctx.before = scores
    ctx.emit(MetricsEvent(which="before", scores=scores))
    return "; ".join(p for p in (cpu_note, loaded, describe(scores, "base model"), note, ctx.judge_fallback) if p)
