"""``lora-trainer``: run a LoraTrainingJob spec, or validate it and its datasets.

    lora-trainer run SPEC.yaml --output DIR [--events FILE|-] [--quiet] [--nproc-per-node N]
    lora-trainer validate SPEC.yaml

With several processes (``--nproc-per-node``, by default one per visible GPU) the command launches its
workers as torchrun does and waits for them (``lora_trainer.distributed``).

SPEC.yaml is a bare spec or a whole LoraTrainingJob manifest. Exit codes (``lora_contract.wire``):
0 success, 1 failure (a retry may help), 2 invalid spec or data (it cannot), 143 stopped by SIGTERM or
SIGINT (in training, after saving a checkpoint a rerun resumes from); the operator's Job relies on 2
and 143.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lora_contract.api import KIND, LoraTrainingJobSpec
from lora_contract.validation import describe_validation_error
from lora_contract.wire import EXIT_INTERRUPTED, EXIT_INVALID_INPUT, NNODES_ENV, NPROC_PER_NODE_ENV
from lora_trainer.errors import StepError, exit_code
from lora_trainer.signals import Interrupted, StopSignals

# How long workers get, after the launcher forwards a SIGTERM, to save a checkpoint and exit before it kills
# them: longer than any pod's grace period, so the kubelet's SIGKILL, not the launcher's, ends a slow save.
WORKER_GRACE_SECONDS = 3600


class SpecFileError(Exception):
    """The spec file cannot be read or is not a valid spec."""


def load_spec(path: str | Path) -> LoraTrainingJobSpec:
    """Read a bare spec or the spec of a LoraTrainingJob manifest (the first, in a multi-document file)."""
    try:
        documents = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as err:
        raise SpecFileError(f"{path}: cannot read YAML: {err}") from err
    manifests = [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]
    if manifests:
        data: Any = manifests[0].get("spec")
    elif len(documents) == 1:
        data = documents[0]
    else:
        raise SpecFileError(f"{path}: expected one spec or a {KIND} manifest, found {len(documents)} documents")
    if not isinstance(data, dict):
        raise SpecFileError(f"{path}: the spec must be a mapping")
    try:
        spec = LoraTrainingJobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecFileError(f"{path}: {describe_validation_error(err)}") from err
    if spec.model is None:  # the operator writes the minion's model into the spec it gives the trainer
        raise SpecFileError(f"{path}: spec.model is not set: a run for a minion ({spec.minion}) gets its model from "
                            "the Minion in the cluster; set spec.model to run this spec here")
    return spec


def _run(args: argparse.Namespace, spec: LoraTrainingJobSpec, signals: StopSignals) -> int:
    from lora_trainer.distributed import World
    from lora_trainer.events import ConsoleSink, JsonlSink, Sink
    from lora_trainer.pipeline import run_pipeline
    from lora_trainer.progress_reporter import ProgressReporter

    sinks: list[Sink] = []
    if World.from_env().is_main:  # the other workers train only: rank 0 reports for the run
        reporter = ProgressReporter.from_env()  # inside a LoraTrainingJob pod: progress to the operator
        if reporter is not None:
            sinks.append(reporter)
        if args.events:
            sinks.append(JsonlSink(args.events))
        if not args.quiet:
            sinks.append(ConsoleSink())
    return run_pipeline(spec, args.output, sinks, signals).exit_code


def _workers(args: argparse.Namespace) -> int:
    """Worker processes this command should launch: ``--nproc-per-node``, else the operator's PET_NPROC_PER_NODE
    (a run over several pods), else one per visible GPU; 1 when it is a worker itself (torchrun's launcher set
    LOCAL_RANK)."""
    if "LOCAL_RANK" in os.environ:
        return 1
    if args.nproc_per_node is not None:
        return args.nproc_per_node
    if NPROC_PER_NODE_ENV in os.environ:
        return int(os.environ[NPROC_PER_NODE_ENV])
    import torch

    return max(1, torch.cuda.device_count())


def _validate(spec: LoraTrainingJobSpec) -> int:
    from lora_trainer.modeling import load_tokenizer
    from lora_trainer.pipeline import quiet_libraries
    from lora_trainer.steps.datasets import prepare, summary

    quiet_libraries()
    try:
        tokenizer, notes = load_tokenizer(spec.model)
        data = prepare(spec, tokenizer)
    except StepError as err:
        print(f"lora-trainer: invalid: {err}", file=sys.stderr)
        return exit_code(err)
    print("spec: valid")
    print("datasets: " + "; ".join([summary(data.stats), *notes]))
    print(json.dumps(data.stats, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    # Before tqdm is imported (it reads this once): library progress bars would garble the checklist.
    os.environ.setdefault("TQDM_DISABLE", "1")
    parser = argparse.ArgumentParser(
        prog="lora-trainer", description="Run a LoraTrainingJob spec, or validate it and its datasets.",
        epilog="exit codes: 0 success, 1 failed (a retry may help), 2 invalid spec or data (it cannot)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the 10-step training pipeline")
    run.add_argument("spec", help="bare spec or LoraTrainingJob manifest (YAML)")
    run.add_argument("--output", required=True, help="folder for checkpoints, adapter, merged model, report")
    run.add_argument("--events", help="append JSON-lines progress events to this file ('-' for stdout)")
    run.add_argument("--quiet", action="store_true", help="no console checklist on stderr")
    run.add_argument("--nproc-per-node", type=int, metavar="N",
                     help="data-parallel worker processes (torchrun's DDP; gloo on CPU, NCCL on GPUs); default: "
                     "one per visible GPU, 1 without")
    validate = commands.add_parser("validate", help="validate the spec and load and refine its datasets")
    validate.add_argument("spec")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except SpecFileError as err:
        print(f"lora-trainer: {err}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    if args.command != "run":
        return _validate(spec)
    if args.nproc_per_node is not None and args.nproc_per_node < 1:
        print("lora-trainer: --nproc-per-node must be at least 1", file=sys.stderr)
        return EXIT_INVALID_INPUT
    # Before torch & co. are imported (seconds): as PID 1 the trainer would drop a SIGTERM until then.
    signals = StopSignals()
    signals.install()
    try:
        workers = _workers(args)
        several_pods = "LOCAL_RANK" not in os.environ and int(os.environ.get(NNODES_ENV, "1")) > 1
        if workers > 1 or several_pods:  # the launcher's own SIGTERM handler forwards the signal to the workers
            from lora_trainer.distributed import Group, launch

            argv = ["run", args.spec, "--output", args.output] + (["--events", args.events] if args.events else []
                                                                  ) + (["--quiet"] if args.quiet else [])
            return launch(workers, argv, WORKER_GRACE_SECONDS, Group.from_env())
        return _run(args, spec, signals)
    except Interrupted as stop:  # before the pipeline started (importing it); it handles the rest
        print(f"lora-trainer: stopped by {stop.signal_name} before the run started", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signals.restore()


if __name__ == "__main__":
    sys.exit(main())
