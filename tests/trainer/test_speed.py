"""The speed bench's fixed workload on the tiny Llama: its shape, never its timings (they are the machine's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoModelForCausalLM

from lora_trainer import speed
from lora_trainer.formats import render_prompt
from lora_trainer.generation import MIN_PROMPT_TOKENS
from lora_trainer.speed import BENCH_NEW_TOKENS, SpeedBench, bench_new_tokens, bench_scores, measure_speed


def test_the_bench_times_the_same_forced_batch_after_one_warm_up(
        tiny_model: Path, tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    prompts = [render_prompt(tiny_tokenizer, [{"role": "user", "content": f"Question {i}?"}]) for i in range(10)]
    calls: list[tuple[list[str], int, bool]] = []
    real = speed.generate_many

    def spy(model: Any, tokenizer: Any, texts: list[str], settings: Any, context: int, **kwargs: Any) -> Any:
        answers = real(model, tokenizer, texts, settings, context, **kwargs)
        assert all(a.new_tokens == settings.max_new_tokens for a in answers)  # exactly, EOS or not
        calls.append((list(texts), settings.max_new_tokens, kwargs["forced"]))
        return answers

    monkeypatch.setattr(speed, "generate_many", spy)
    heard: list[str] = []
    bench = measure_speed(model, tiny_tokenizer, prompts, context=64, on_start=heard.append)
    assert bench is not None and bench.prompts == 8 and bench.new_tokens == BENCH_NEW_TOKENS
    assert calls == [(prompts[:8], BENCH_NEW_TOKENS, True)] * (1 + speed.BENCH_REPEATS)  # warm-up + timed runs
    assert len(bench.runs) == speed.BENCH_REPEATS and all(r > 0 for r in bench.runs)
    assert bench.tokens_per_second > 0 and bench.noise_percent >= 0
    assert heard == [f"measuring speed: 8 prompts x {BENCH_NEW_TOKENS} tokens, a warm-up and 3 timed runs"]


def test_a_short_context_forces_fewer_tokens_and_no_room_or_prompt_means_no_bench(
        tiny_model: Path, tiny_tokenizer: Any) -> None:
    assert bench_new_tokens(1024) == BENCH_NEW_TOKENS
    assert bench_new_tokens(MIN_PROMPT_TOKENS + 5) == 5 and bench_new_tokens(MIN_PROMPT_TOKENS) == 0
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    prompt = render_prompt(tiny_tokenizer, [{"role": "user", "content": "Hi?"}])
    short = measure_speed(model, tiny_tokenizer, [prompt], context=MIN_PROMPT_TOKENS + 3, repeats=2)
    assert short is not None and (short.prompts, short.new_tokens, len(short.runs)) == (1, 3, 2)
    assert measure_speed(model, tiny_tokenizer, [prompt], context=MIN_PROMPT_TOKENS) is None
    assert measure_speed(model, tiny_tokenizer, [], context=64) is None


def test_median_noise_band_and_scores() -> None:
    bench = SpeedBench(8, 16, (100.0, 90.0, 120.0))
    assert bench.tokens_per_second == 100.0
    assert bench.noise_percent == 30.0  # the whole spread over the median
    assert bench_scores(bench) == {"bench_tokens_per_second": 100.0, "bench_noise_percent": 30.0}
    assert bench_scores(None) == {"bench_tokens_per_second": None, "bench_noise_percent": None}
