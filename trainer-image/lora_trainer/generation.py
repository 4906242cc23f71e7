"""Answer generation for grading and testing, timed around ``generate`` only.

Several prompts per ``generate`` call, because the weights are then read once per token for the
whole batch: 11 answers of up to 48 tokens from SmolLM2-135M on 2 CPU cores took 33 s one at a time,
11 s in batches of 8 and 7.7 s in one batch.
Prompts are left-padded and masked, so an answer does not depend on its batch neighbours beyond
floating-point rounding. The response time an answer reports is its batch's time divided by the
batch's answers: before and after are generated alike, so they stay comparable. Prompts longer
than the context keep their end, which holds the question and the template's generation prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig

from lora_contract.api import GenerationSettings

MIN_PROMPT_TOKENS = 16
BATCH_SIZE = 16  # its KV cache is far smaller than the activations training keeps for a few sequences


@dataclass(frozen=True)
class Answer:
    text: str
    seconds: float
    new_tokens: int
    prompt_tokens: int
    original_prompt_tokens: int


def context_limit(model: Any, max_length: int) -> int:
    """Tokens of prompt + answer: the training length, bounded by the model's positions."""
    positions = getattr(model.config, "max_position_embeddings", None) or max_length
    return min(max_length, positions)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-turn ids from the generation config and the tokenizer (chat templates differ)."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


def generate_many(model: Any, tokenizer: Any, prompt_texts: Sequence[str], settings: GenerationSettings,
                  context: int, batch_size: int = BATCH_SIZE,
                  on_batch: Callable[[int], None] | None = None, forced: bool = False) -> list[Answer]:
    """Answers to ``prompt_texts``, ``batch_size`` prompts per ``generate`` call, left-padded. Each answer's
    ``seconds`` is its batch's generation time divided by the batch's answers; ``on_batch`` hears how many
    answers are done after each batch. ``forced`` suppresses the end-of-turn tokens until
    ``max_new_tokens`` (``min_new_tokens`` equal to it), so every answer has exactly that many new tokens
    whatever the model would say: the speed bench's fixed workload (``lora_trainer.speed``)."""
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [0])[0]
    sampling = {"temperature": settings.temperature, "top_p": settings.top_p} if settings.do_sample else {}
    length = {"min_new_tokens": settings.max_new_tokens} if forced else {}
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                              pad_token_id=pad, eos_token_id=eos, **sampling, **length)
    device = next(model.parameters()).device
    budget = max(MIN_PROMPT_TOKENS, context - settings.max_new_tokens)
    model.eval()
    answers: list[Answer] = []
    for start in range(0, len(prompt_texts), batch_size):
        encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompt_texts[start:start + batch_size]]
        kept = [ids[-budget:] for ids in encoded]
        width = max(len(k) for k in kept)
        input_ids = torch.tensor([[pad] * (width - len(k)) + k for k in kept], device=device)
        attention = torch.tensor([[0] * (width - len(k)) + [1] * len(k) for k in kept], device=device)
        with torch.inference_mode():
            began = time.perf_counter()
            output = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config)
            seconds = (time.perf_counter() - began) / len(kept)
        for row, ids, original in zip(output[:, width:].tolist(), kept, encoded, strict=True):
            new = _until_end(row, eos)
            text = tokenizer.decode(new, skip_special_tokens=True).strip()
            answers.append(Answer(text, seconds, len(new), len(ids), len(original)))
        if on_batch:
            on_batch(len(answers))
    return answers


def _until_end(tokens: list[int], eos: list[int]) -> list[int]:
    """A batch row's new tokens up to its first end-of-turn token (kept, as a lone sequence ends with it);
    what follows is the padding of rows that finished before the longest."""
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens
