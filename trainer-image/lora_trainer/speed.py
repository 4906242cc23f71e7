"""The speed bench: generation speed on a fixed workload, so that answer length cannot move it.

The graded answers' ``tokensPerSecond`` divides the tokens a model chose to say by the time of
batches that carry a fixed cost (the prompt's forward pass, per-call overhead) and stop at each
answer's end-of-turn token: a model that answers in fewer tokens reads as slower although its
compute per token is unchanged. A merged LoRA model has exactly the base model's architecture, yet
a run over 346 docstring pairs read "speed -89%" that way. The bench instead generates the same
prompts (the first ``BENCH_PROMPTS`` evaluation items, one batch) with exactly ``new_tokens`` new
tokens each (end-of-turn suppressed), once to warm up and then ``BENCH_REPEATS`` timed times, for
before and after alike. It reports the median rate and the runs' relative spread as its noise band,
and step 9 calls a change inside the noise "no change" (``lora_contract.rendering.speed_text``).
Numbers and why: docs/grading.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any

from lora_contract.api import GenerationSettings
from lora_trainer.generation import MIN_PROMPT_TOKENS, generate_many

# A run of 8 x 16 tokens takes about 2.5 s for SmolLM2-135M on 2 CPU cores (50-65 tokens/s), so a
# measurement (warm-up + 3 runs) adds about 12 s to each of steps 0 and 8; 32 tokens took 18 s.
BENCH_PROMPTS = 8  # one batch (grading's hold 16); the quickstart's 11 items and the default 16 reach it
BENCH_NEW_TOKENS = 16  # decode steps outnumber the one prompt pass; fewer where the context is short
BENCH_REPEATS = 3  # the fewest runs whose median ignores one disturbed run


@dataclass(frozen=True)
class SpeedBench:
    prompts: int
    new_tokens: int  # per prompt, forced
    runs: tuple[float, ...]  # tokens per second of each timed run, warm-up excluded

    @property
    def tokens_per_second(self) -> float:
        return median(self.runs)

    @property
    def noise_percent(self) -> float:
        """(max - min) / median x 100 of the runs. The whole spread, not half: two measurements of one model
        can put their medians about a whole spread apart, and half of it would call such a pair a change."""
        return (max(self.runs) - min(self.runs)) / self.tokens_per_second * 100


def bench_new_tokens(context: int, new_tokens: int = BENCH_NEW_TOKENS) -> int:
    """``new_tokens``, or fewer where the context would leave the prompt less than ``MIN_PROMPT_TOKENS``;
    0 where not even one token fits."""
    return max(0, min(new_tokens, context - MIN_PROMPT_TOKENS))


def measure_speed(model: Any, tokenizer: Any, prompt_texts: Sequence[str], context: int,
                  prompts: int = BENCH_PROMPTS, new_tokens: int = BENCH_NEW_TOKENS, repeats: int = BENCH_REPEATS,
                  on_start: Callable[[str], None] | None = None) -> SpeedBench | None:
    """Tokens per second of ``model`` generating exactly ``new_tokens`` greedy tokens for each of the first
    ``prompts`` of ``prompt_texts`` in one batch: one discarded warm-up run (the one-time costs of these
    shapes), then ``repeats`` timed runs. None without a prompt or room for a token; ``on_start`` hears
    what is measured before it starts (a few seconds on a CPU)."""
    chosen = list(prompt_texts[:prompts])
    forced = bench_new_tokens(context, new_tokens)
    if not chosen or forced == 0:
        return None
    if on_start:
        on_start(f"measuring speed: {len(chosen)} prompts x {forced} tokens, a warm-up and {repeats} timed runs")
    settings = GenerationSettings(max_new_tokens=forced, do_sample=False)

    def rate() -> float:
        answers = generate_many(model, tokenizer, chosen, settings, context, batch_size=len(chosen), forced=True)
        return sum(a.new_tokens for a in answers) / sum(a.seconds for a in answers)

    rate()
    return SpeedBench(len(chosen), forced, tuple(rate() for _ in range(repeats)))


def bench_scores(bench: SpeedBench | None) -> dict[str, float | None]:
    """``bench`` as the ``GradeScores`` fields it fills (None for both without a bench)."""
    return {"bench_tokens_per_second": round(bench.tokens_per_second, 2) if bench else None,
            "bench_noise_percent": round(bench.noise_percent, 2) if bench else None}
