"""Answer generation for grading and testing, timed around ``generate`` only.

One prompt at a time: the timing is per answer (the product spec's response time) and no
padding can change an answer. Prompts longer than the context keep their end, which holds
the question and the template's generation prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig

from lora_contract.api import GenerationSettings

MIN_PROMPT_TOKENS = 16


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


def generate(model: Any, tokenizer: Any, prompt_text: str, settings: GenerationSettings, context: int) -> Answer:
    ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    budget = max(MIN_PROMPT_TOKENS, context - settings.max_new_tokens)
    kept = ids[-budget:]
    sampling = {"temperature": settings.temperature, "top_p": settings.top_p} if settings.do_sample else {}
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=_eos_ids(model, tokenizer), **sampling,
    )
    device = next(model.parameters()).device
    input_ids = torch.tensor([kept], device=device)
    model.eval()
    with torch.inference_mode():
        start = time.perf_counter()
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                generation_config=config)
        seconds = time.perf_counter() - start
    new = output[0, len(kept):]
    text = tokenizer.decode(new, skip_special_tokens=True).strip()
    return Answer(text, seconds, int(new.numel()), len(kept), len(ids))
