"""Batched generation answers as one prompt at a time would, on the tiny Llama."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from lora_contract.api import GenerationSettings
from lora_trainer.formats import render_prompt
from lora_trainer.generation import _until_end, generate_many


def test_batches_answer_like_single_prompts_and_report_each_batch(tiny_model: Path, tiny_tokenizer: Any) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    prompts = [render_prompt(tiny_tokenizer, [{"role": "user", "content": text}]) for text in
               ("What is a minion?", "", "Tell me about the handbook, the rules and the minions " * 6)]
    settings = GenerationSettings(max_new_tokens=12)
    done: list[int] = []
    batched = generate_many(model, tiny_tokenizer, prompts, settings, context=64, batch_size=2, on_batch=done.append)
    assert done == [2, 3]
    single = [generate_many(model, tiny_tokenizer, [p], settings, context=64)[0] for p in prompts]
    assert [a.text for a in batched] == [a.text for a in single]
    assert [a.new_tokens for a in batched] == [a.new_tokens for a in single]
    assert batched[2].prompt_tokens == 64 - 12 < batched[2].original_prompt_tokens  # kept its end
    assert all(a.seconds > 0 for a in batched)


def test_a_row_ends_at_its_first_end_of_turn_token() -> None:
    assert _until_end([5, 6, 2, 0, 0], eos=[2]) == [5, 6, 2]
    assert _until_end([5, 6, 7], eos=[2]) == [5, 6, 7]


def test_forced_generation_has_exactly_the_new_tokens_asked_for_whatever_end_of_turn(
        tiny_model: Path, tiny_tokenizer: Any) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tiny_tokenizer.eos_token_id] = 1e4  # a model that only ever wants to stop
    model.lm_head = head
    prompts = [render_prompt(tiny_tokenizer, [{"role": "user", "content": text}]) for text in ("Hi?", "What is XP?")]
    settings = GenerationSettings(max_new_tokens=9)
    assert [a.new_tokens for a in generate_many(model, tiny_tokenizer, prompts, settings, context=64)] == [1, 1]
    forced = generate_many(model, tiny_tokenizer, prompts, settings, context=64, forced=True)
    assert [a.new_tokens for a in forced] == [9, 9]
