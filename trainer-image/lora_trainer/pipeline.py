"""The 10-step pipeline as one function with pluggable sinks: ``run_pipeline``.

Steps run in the order datasets (1), before-metrics (0), model (2), then 3..9: grading the base
model needs the held-out split, so the datasets come first; before-metrics loads the base model
and grades it untouched, then step 2 wraps that same model in LoRA (docs/trainer.md). Events
carry step indices, so consumers show the checklist in index order whatever the execution order.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
import transformers

from lora_contract.api import PIPELINE_STEPS, LoraTrainingJobSpec, TrainerStatus
from lora_contract.progress import FailureEvent, StepEvent, StopEvent, dump_status, final_summary
from lora_contract.wire import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from lora_contract.xp import xp_for
from lora_trainer import distributed, sharding
from lora_trainer.context import RunContext
from lora_trainer.distributed import World
from lora_trainer.errors import StepError, exit_code
from lora_trainer.events import Emitter, Sink
from lora_trainer.layout import OutputLayout, write_atomically
from lora_trainer.signals import Interrupted, StopSignals
from lora_trainer.steps import (
    after_metrics,
    before_metrics,
    improvements,
    model,
    saving,
    testing,
    training,
    training_config,
    validation,
)
from lora_trainer.steps import datasets as datasets_step

TERMINATION_MESSAGE_ENV = "LORA_TERMINATION_MESSAGE_PATH"

STEP_RUNNERS: dict[int, Callable[[RunContext], str]] = {
    0: before_metrics.run,
    1: datasets_step.run,
    2: model.run,
    3: training_config.run,
    4: training.run,
    5: saving.run,
    6: validation.run,
    7: testing.run,
    8: after_metrics.run,
    9: improvements.run,
}
EXECUTION_ORDER: tuple[int, ...] = (1, 0, 2, 3, 4, 5, 6, 7, 8, 9)
assert sorted(EXECUTION_ORDER) == list(range(len(PIPELINE_STEPS))) == sorted(STEP_RUNNERS)
# What the other workers of a data-parallel run do (lora_trainer.distributed): rank 0 does everything else.
WORKER_STEPS: tuple[int, ...] = (1, 2, 3, 4)
TRAINING_STEP = PIPELINE_STEPS.index("training")


def quiet_libraries() -> None:
    """Library progress bars, info logs and deprecation notices (meant for developers of the pinned
    libraries, not for users of the trainer) would interleave with the console sink's checklist."""
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)
    # peft looks for the base model's config.json to guess whether the vocabulary changed; a GGUF or
    # package source has none, and this trainer never resizes the vocabulary.
    warnings.filterwarnings("ignore", message="Could not find a config file in", category=UserWarning)


class WorkerFailed(StepError):
    """Another worker of a data-parallel run failed before training: rank 0 reports it as the run's failure."""

    def __init__(self, rank: int, step: int, code: int, message: str) -> None:
        super().__init__(f"{message} (worker rank {rank})")
        self.step, self.code = step, code


def _raise_worker_failure(found: tuple[int, int, int, str] | None) -> None:
    if found is not None:
        raise WorkerFailed(*found)


@dataclass(frozen=True)
class PipelineResult:
    """How a run ended: the final trainer status, the exit code (``lora_contract.wire``: 0 ok, 1 failed: a
    retry may help, 2 invalid spec or data: it cannot, 143 stopped by a signal: a retry resumes) and, for a
    run that succeeded, its XP by the shared table."""

    status: TrainerStatus
    exit_code: int
    xp: int | None


def _write_results(result: PipelineResult, output_dir: Path) -> None:
    report = {"trainer": dump_status(result.status), "xp": result.xp, "exitCode": result.exit_code}
    write_atomically(OutputLayout(output_dir).report, json.dumps(report, indent=2))
    termination = os.environ.get(TERMINATION_MESSAGE_ENV)
    if termination:
        Path(termination).write_text(final_summary(result.status))


def stop_message(stop: Interrupted, index: int) -> str:
    """Where a stop signal ended the run, and what a retry does."""
    if stop.checkpoint:
        return (f"stopped by {stop.signal_name} after optimizer step {stop.step}/{stop.total}: saved "
                f"{stop.checkpoint}; a retry resumes from it")
    return (f"stopped by {stop.signal_name} in step {index} {PIPELINE_STEPS[index]}; a retry runs this step "
            "again (training resumes from the newest complete checkpoint)")


def run_pipeline(spec: LoraTrainingJobSpec, output_dir: str | Path, sinks: Iterable[Sink],
                 signals: StopSignals | None = None) -> PipelineResult:
    """Run every step, emitting events to ``sinks``; return how it ended.

    A failure marks its step Failed and emits a FailureEvent; a stop signal (``signals``, installed by the
    CLI) leaves its step Active and emits a StopEvent. The result is also written to
    ``<output_dir>/report.json`` and the final status, in compact form, to the termination message
    file named by $LORA_TERMINATION_MESSAGE_PATH (the operator's copy, should progress reports be lost).
    A worker other than rank 0 of a data-parallel run does steps 1 to 4 only and writes neither.
    """
    output = Path(output_dir).resolve()  # artifact paths in the status are absolute
    output.mkdir(parents=True, exist_ok=True)
    quiet_libraries()
    emitter = Emitter(sinks)
    signals = signals or StopSignals()
    world = World.from_env()
    ctx = RunContext(spec=spec, output_dir=output, emit=emitter.emit, signals=signals, world=world)
    code, message = EXIT_OK, ""
    index = EXECUTION_ORDER[0]
    shared = not world.distributed  # whether the workers have exchanged how their steps before training went
    try:
        try:
            distributed.init(world, torch.cuda.is_available())
            ctx.strategy = sharding.for_run(spec, world)
            for index in EXECUTION_ORDER if world.is_main else WORKER_STEPS:
                if index == TRAINING_STEP and not shared:
                    shared = True
                    _raise_worker_failure(distributed.first_failure(None))
                emitter.emit(StepEvent(index=index, state="Active"))
                done = STEP_RUNNERS[index](ctx)
                emitter.emit(StepEvent(index=index, state="Completed", message=done))
        finally:
            signals.settle()  # from here on a signal is recorded only: the results below get written
    except Interrupted as stop:
        code = EXIT_INTERRUPTED
        emitter.emit(StopEvent(index=index, message=stop_message(stop, index)))
    except WorkerFailed as err:
        index, code, message = err.step, err.code, str(err)
    except StepError as err:
        code, message = exit_code(err), str(err)
    except Exception as err:  # unexpected: keep the traceback in the log, the gist in the status
        traceback.print_exc(file=sys.stderr)
        code, message = EXIT_FAILED, f"{type(err).__name__}: {err}"
    if code not in (EXIT_OK, EXIT_INTERRUPTED) and not shared:
        distributed.first_failure((index, code, message))  # rank 0 waits for this, then reports its own
    if code not in (EXIT_OK, EXIT_INTERRUPTED):
        emitter.emit(StepEvent(index=index, state="Failed", message=message))
        emitter.emit(FailureEvent(message=f"step {index} {PIPELINE_STEPS[index]} failed: {message}"))
    final = emitter.close()
    result = PipelineResult(status=final, exit_code=code, xp=None if code else xp_for(final))
    if world.is_main:
        _write_results(result, output)
    return result
