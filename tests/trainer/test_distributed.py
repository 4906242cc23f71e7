"""Data-parallel training (lora_trainer.distributed): ``lora-trainer run --nproc-per-node 2`` on CPU, where the
workers talk over gloo through torchrun's own launcher and rendezvous, exactly as GPU workers do over NCCL
(what only a GPU shows, NCCL and one device per rank, is bench/gpu_check.sh's)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lora_contract.wire import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID_INPUT,
    EXIT_OK,
    MASTER_ADDR_ENV,
    MASTER_PORT_ENV,
    NNODES_ENV,
    NODE_RANK_ENV,
    NPROC_PER_NODE_ENV,
)
from lora_trainer.checkpoints import MARKER
from lora_trainer.distributed import Group, GroupNotFormed, exit_code_of, gather
from tests.cluster.controlplane import free_port
from tests.trainer.conftest import tiny_spec_dict

# Loss and weights of 2 workers against 1, with the same global batch: the same items per optimizer step
# (accelerate shards each global batch of the seeded sampler over the ranks), so only the order of
# floating-point sums differs (the gradient all-reduce, the loss gathered over ranks). In float32 over a
# few steps that stays orders of magnitude below these bounds; a wrong split (other items, another batch
# size, another number of steps) moves the loss by 1e-2 or more and the weights by far more.
LOSS_TOLERANCE = 1e-4
WEIGHT_TOLERANCE = 1e-4


def _run(spec: dict, output: Path, nproc: int, timeout: float = 600, **popen) -> subprocess.Popen[str]:
    output.mkdir(parents=True, exist_ok=True)
    (output.parent / f"{output.name}.yaml").write_text(yaml.safe_dump(spec))
    return subprocess.Popen(
        [sys.executable, "-m", "lora_trainer.cli", "run", str(output.parent / f"{output.name}.yaml"), "--output",
         str(output), "--events", str(output.parent / f"{output.name}.events.jsonl"), "--quiet",
         "--nproc-per-node", str(nproc)], text=True, **{"stderr": subprocess.PIPE, **popen})


def with_sitecustomize(folder: Path, code: str) -> dict[str, str]:
    """The environment of a run whose every process (the launcher and its workers) imports ``code`` at startup:
    as ``sitecustomize`` from ``folder``, put first on PYTHONPATH."""
    (folder / "sitecustomize.py").write_text(code)
    return {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _finish(proc: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _events(output: Path) -> list[dict]:
    path = output.parent / f"{output.name}.events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _losses(output: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in _events(output) if e.get("type") == "train"}


def _stopped_after_checkpoint_4(spec: dict, output: Path, **popen) -> int:
    """2 workers, stopped by SIGTERM once checkpoint-4 is complete; the step of the newest complete checkpoint
    (the test is skipped if the run finished first)."""
    proc = _run(spec, output, 2, start_new_session=True, **popen)
    deadline = time.monotonic() + 300
    while not (output / "checkpoints" / "checkpoint-4" / MARKER).is_file() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGTERM)
    code, err = _finish(proc, 300)
    assert code in (EXIT_INTERRUPTED, EXIT_OK), err[-3000:]
    if code == EXIT_OK:
        pytest.skip("the run finished before the stop signal reached it")
    return max(int(p.name.removeprefix("checkpoint-")) for p in (output / "checkpoints").iterdir()
               if (p / MARKER).is_file())


@pytest.fixture(scope="module")
def one_and_two(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """The tiny spec (global batch 4, 6 optimizer steps) trained by 1 process and by 2; the 2-worker stderr.
    In float32 and without LoRA dropout: in bf16 the two differ by up to 1e-3 in loss after 6 steps (bf16 keeps
    3 digits of each sum), and dropout draws its masks per rank (the runs are then alike in distribution only)."""
    spec = tiny_spec_dict(tiny_model, lora={"maxSteps": 6, "saveSteps": 3, "evalSteps": 3, "bf16": False,
                                            "dropout": 0.0})
    root = tmp_path_factory.mktemp("ddp")
    two = _run(spec, root / "two", 2)
    code2, err2 = _finish(two)
    one = _run(spec, root / "one", 1)
    code1, err1 = _finish(one)
    assert (code1, code2) == (EXIT_OK, EXIT_OK), (err1[-3000:], err2[-3000:])
    return root / "one", root / "two", err2.splitlines()


def test_two_workers_train_what_one_process_trains(one_and_two) -> None:
    one, two, _ = one_and_two
    losses1, losses2 = _losses(one), _losses(two)
    assert sorted(losses1) == sorted(losses2) == [1, 2, 3, 4, 5, 6]  # the same optimizer steps
    for step, loss in losses1.items():
        assert abs(losses2[step] - loss) < LOSS_TOLERANCE, (step, loss, losses2[step])
    adapter1 = load_file(one / "adapter" / "adapter_model.safetensors")
    adapter2 = load_file(two / "adapter" / "adapter_model.safetensors")
    assert adapter1.keys() == adapter2.keys()
    moved = max((adapter1[k] - 0).abs().max().item() for k in adapter1)
    assert moved > 10 * WEIGHT_TOLERANCE  # the comparison below is not between untrained adapters
    for key in adapter1:
        assert torch.allclose(adapter1[key], adapter2[key], atol=WEIGHT_TOLERANCE), key


def test_two_pods_meet_at_rank_0s_address_and_train_what_one_process_trains(one_and_two, tiny_model: Path,
                                                                            tmp_path: Path) -> None:
    """What the operator's Indexed Job runs: one launcher per pod with the PET_* variables (node rank = pod
    index, rank 0's address), here two processes on loopback sharing one output folder (the shared volume)."""
    one, _, _ = one_and_two
    spec = yaml.safe_load((one.parent / "one.yaml").read_text())
    port = free_port()
    output = tmp_path / "pods"
    logs = [tmp_path / f"pod-{i}.log" for i in (1, 0)]
    group = {NNODES_ENV: "2", NPROC_PER_NODE_ENV: "1", MASTER_ADDR_ENV: "127.0.0.1", MASTER_PORT_ENV: str(port)}
    pods = [_run(spec, output, 1, stderr=log.open("w"), env={**os.environ, **group, NODE_RANK_ENV: log.stem[-1]})
            for log in logs]  # index 1 first: it waits for rank 0's store, as a pod that starts first does
    codes = [pod.wait(timeout=600) for pod in pods]
    assert codes == [EXIT_OK, EXIT_OK], [log.read_text()[-2000:] for log in logs]
    losses1, losses2 = _losses(one), _losses(output)
    assert sorted(losses2) == sorted(losses1)
    assert all(abs(losses2[step] - loss) < LOSS_TOLERANCE for step, loss in losses1.items()), (losses1, losses2)
    config = next(e["message"] for e in _events(output) if e.get("type") == "step" and e["index"] == 3
                  and e["state"] == "Completed")
    assert "x 2 processes" in config


def test_rank_0_alone_reports_grades_and_saves(one_and_two) -> None:
    one, two, _ = one_and_two
    steps = [(e["index"], e["state"]) for e in _events(two) if e.get("type") == "step"]
    assert steps == [(e["index"], e["state"]) for e in _events(one) if e.get("type") == "step"]  # one stream
    config = next(e["message"] for e in _events(two) if e.get("type") == "step" and e["index"] == 3
                  and e["state"] == "Completed")
    assert ("batch 2 x accumulation 1 x 2 processes = 4 items/step, 6 optimizer steps (maxSteps); DDP (auto: on CPU "
            "every process holds the model in host memory)") in config
    report1, report2 = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert report2["exitCode"] == 0 and report2["xp"] == report1["xp"]
    for which in ("before", "after"):  # the held-out loss rank 0 measures for the grade
        assert abs(report2["trainer"][which]["evalLoss"] - report1["trainer"][which]["evalLoss"]) < LOSS_TOLERANCE
    assert not (two / "checkpoints").exists() or not any((two / "checkpoints").iterdir())  # step 9 cleaned up


# accelerate turns FSDP on only for GPU-like devices: on CPU it silently trains DDP, so a CPU test of FSDP would
# test DDP twice. This module, imported at startup by every process of the run (the launcher and its workers),
# puts accelerate's state into FSDP mode once the Trainer has created its accelerator, as it is on GPUs; the
# step 4 message then reports the share of the parameters rank 0 held, which the test checks.
FSDP_ON_CPU = """
import transformers
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

create = transformers.Trainer.create_accelerator_and_postprocess

def create_with_fsdp(self):
    create(self)
    if self.args.fsdp_plugin_args is not None and not self.is_fsdp_enabled:
        state = self.accelerator.state
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
        state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.is_fsdp_enabled = True

transformers.Trainer.create_accelerator_and_postprocess = create_with_fsdp
"""


def test_fsdp_shards_the_model_and_trains_what_one_process_trains(one_and_two, tmp_path: Path) -> None:
    """resources.strategy: fsdp with 2 workers (FSDP2 over gloo): each holds half of every parameter, and the
    losses, the adapter rank 0 saves (gathered onto a fresh base model) and the XP are the one-process run's
    within the DDP tolerances: FSDP's gradient reduce-scatter sums in another order, nothing more."""
    one, _, _ = one_and_two
    spec = yaml.safe_load((one.parent / "one.yaml").read_text())
    spec["resources"] = {**spec.get("resources", {}), "strategy": "fsdp"}
    env = with_sitecustomize(tmp_path, FSDP_ON_CPU)
    output = tmp_path / "fsdp"
    code, err = _finish(_run(spec, output, 2, env=env))
    assert code == EXIT_OK, err[-3000:]
    messages = {e["index"]: e["message"] for e in _events(output) if e.get("type") == "step"
                and e["state"] == "Completed"}
    assert "x 2 processes = 4 items/step, 6 optimizer steps (maxSteps); FSDP (resources.strategy: fsdp)" in messages[3]
    held = float(messages[4].split("FSDP: rank 0 held ")[1].split("%")[0])
    assert 45 < held < 55, messages[4]  # half of every parameter, give or take the odd-sized ones
    losses1, losses2 = _losses(one), _losses(output)
    assert sorted(losses1) == sorted(losses2)
    assert all(abs(losses2[step] - loss) < LOSS_TOLERANCE for step, loss in losses1.items()), (losses1, losses2)
    adapter1 = load_file(one / "adapter" / "adapter_model.safetensors")
    adapter2 = load_file(output / "adapter" / "adapter_model.safetensors")
    assert adapter1.keys() == adapter2.keys()
    for key in adapter1:
        assert torch.allclose(adapter1[key], adapter2[key], atol=WEIGHT_TOLERANCE), key
    report1, report2 = (json.loads((d / "report.json").read_text()) for d in (one, output))
    assert report2["xp"] == report1["xp"]


def test_an_fsdp_checkpoint_resumes_under_fsdp_and_is_refused_clearly_by_one_process(tiny_model: Path,
                                                                                      tmp_path: Path) -> None:
    """SIGTERM to an FSDP group: one checkpoint, optimizer state keyed by parameter name. A retry in one process
    cannot load that state: exit code 2 with what to change, the checkpoint kept; the FSDP retry resumes it."""
    spec = tiny_spec_dict(tiny_model, lora={"maxSteps": 40, "saveSteps": 4, "evalSteps": 1000, "batchSize": 2})
    spec["resources"] = {**spec.get("resources", {}), "strategy": "fsdp"}
    env = with_sitecustomize(tmp_path, FSDP_ON_CPU)
    output = tmp_path / "sharded"
    saved = _stopped_after_checkpoint_4(spec, output, env=env)

    code, err = _finish(_run(spec, output, 1, env=env))
    assert code == EXIT_INVALID_INPUT, err[-3000:]
    report = json.loads((output / "report.json").read_text())
    assert (f"checkpoint-{saved} was saved by FSDP training and this attempt trains with one process or DDP"
            in report["trainer"]["message"]), report["trainer"]["message"]
    assert (output / "checkpoints" / f"checkpoint-{saved}" / MARKER).is_file()

    code, err = _finish(_run(spec, output, 2, env=env))
    assert code == EXIT_OK, err[-3000:]
    resumed = [e["message"] for e in _events(output) if e.get("type") == "step" and e["index"] == 4
               and e["state"] == "Completed"][-1]
    assert f"resumed from checkpoint-{saved}" in resumed and resumed.startswith("40 optimizer steps"), resumed
    assert "FSDP: rank 0 held" in resumed


def test_the_group_gathers_with_a_replaced_pod_and_starts_only_when_all_are_there() -> None:
    """Node rank 0 and two others check in (``distributed.gather``); the first pod of rank 1 goes away after
    checking in (deleted) and its replacement checks in: rank 0 lets the group go only once ranks 1 and 2 are
    connected, and every live pod is told to go."""
    port = free_port()
    master = f"127.0.0.1:{port - 1}"  # gather listens on the master port + 1
    done: dict[str, float] = {}

    def member(name: str, rank: int) -> threading.Thread:
        def go() -> None:
            gather(Group(3, rank, master), timeout=60, poll=0.05)
            done[name] = time.monotonic()
        thread = threading.Thread(target=go, daemon=True)
        thread.start()
        return thread

    rank_0 = member("rank 0", 0)
    wait_until = time.monotonic() + 10
    while time.monotonic() < wait_until:  # a pod of rank 1 checks in, then is deleted
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as gone:
            gone.sendall(b"1\n")
            break
        time.sleep(0.05)
    time.sleep(0.3)
    rank_2 = member("rank 2", 2)
    time.sleep(0.5)
    assert not done, "the group went with rank 1 gone"
    replacement = member("rank 1", 1)
    for thread in (rank_0, rank_2, replacement):
        thread.join(timeout=10)
    assert sorted(done) == ["rank 0", "rank 1", "rank 2"]


def test_the_group_does_not_gather_when_rank_0_never_comes() -> None:
    with pytest.raises(GroupNotFormed, match="did not gather the group"):
        gather(Group(2, 1, f"127.0.0.1:{free_port() - 1}"), timeout=1, poll=0.1)


@pytest.mark.parametrize("node_rank", [0, 1])
def test_a_pod_waiting_for_its_group_stops_at_sigterm_in_seconds(tiny_model: Path, tmp_path: Path,
                                                                 node_rank: int) -> None:
    """A pod deleted before its group formed (the others not started): it leaves with 143 at once (a disruption)
    instead of ignoring the SIGTERM inside torch's rendezvous until the kubelet kills it (137, a dead worker).
    The test waits until the pod is in the gather: rank 0 listening, rank 1 checked in with a stand-in rank 0."""
    port = free_port()
    stand_in = None
    if node_rank == 1:
        stand_in = socket.create_server(("127.0.0.1", port))
        stand_in.settimeout(120)
    group = {NNODES_ENV: "2", NPROC_PER_NODE_ENV: "1", MASTER_ADDR_ENV: "127.0.0.1",
             MASTER_PORT_ENV: str(port - 1), NODE_RANK_ENV: str(node_rank)}
    proc = _run(tiny_spec_dict(tiny_model), tmp_path / "pod", 1, env={**os.environ, **group})
    if stand_in is not None:
        with stand_in, stand_in.accept()[0] as connection:
            assert connection.recv(16) == b"1\n"  # checked in: now waiting for "go"
            os.kill(proc.pid, signal.SIGTERM)
            started = time.monotonic()
            code, err = _finish(proc, 60)
    else:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break  # listening: in the gather (the connection says nothing and goes)
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGTERM)
        started = time.monotonic()
        code, err = _finish(proc, 60)
    assert code == EXIT_INTERRUPTED, err[-3000:]
    assert time.monotonic() - started < 10
    assert "stopped by SIGTERM before the run started" in err


def test_workers_exit_codes_survive_the_launcher() -> None:
    assert exit_code_of([0, 0]) == EXIT_OK
    assert exit_code_of([1, EXIT_INVALID_INPUT]) == EXIT_INVALID_INPUT  # no retry helps
    assert exit_code_of([EXIT_INTERRUPTED, -15]) == EXIT_INTERRUPTED  # a checkpoint to resume from
    assert exit_code_of([0, -9]) == EXIT_FAILED


def test_invalid_input_on_the_workers_is_exit_code_2(tiny_model: Path, tmp_path: Path) -> None:
    """A global batch that cannot be split evenly: every worker refuses it in step 3."""
    spec = tiny_spec_dict(tiny_model, lora={"batchSize": 3, "gradientAccumulationSteps": 1})
    code, err = _finish(_run(spec, tmp_path / "odd", 2))
    assert code == EXIT_INVALID_INPUT, err[-3000:]
    report = json.loads((tmp_path / "odd" / "report.json").read_text())
    assert "cannot be split evenly over 2 processes" in json.dumps(report)


def test_sigterm_stops_every_worker_at_one_checkpoint_and_the_rerun_resumes_there(tiny_model: Path,
                                                                                    tmp_path: Path) -> None:
    """SIGTERM to the launcher (the pod's PID 1): it forwards it, the workers agree on the step, save one
    checkpoint, and stop with 143; the rerun with 2 workers resumes from it and finishes."""
    spec = tiny_spec_dict(tiny_model, lora={"maxSteps": 60, "saveSteps": 1000, "evalSteps": 1000,
                                            "loggingSteps": 1, "batchSize": 2})
    output = tmp_path / "stopped"
    proc = _run(spec, output, 2, start_new_session=True)
    deadline = time.monotonic() + 300
    while not any(s >= 5 for s in _losses(output)) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.kill(proc.pid, signal.SIGTERM)
    code, err = _finish(proc, 300)
    assert code == EXIT_INTERRUPTED, err[-3000:]
    saved = [p for p in (output / "checkpoints").iterdir() if (p / MARKER).is_file()]
    assert len(saved) == 1, saved
    step = int(saved[0].name.removeprefix("checkpoint-"))
    assert sorted(p.name for p in saved[0].glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert step < 60
    code, err = _finish(_run(spec, output, 2))
    assert code == EXIT_OK, err[-3000:]
    resumed = [e["message"] for e in _events(output) if e.get("type") == "step" and e["index"] == 4
               and e["state"] == "Completed"][-1]
    assert f"resumed from checkpoint-{step}" in resumed


def test_a_checkpoint_of_two_workers_resumes_in_one_process(tiny_model: Path, tmp_path: Path) -> None:
    """A retry with another world size (a node lost, fewer GPUs free): the checkpoint holds the whole adapter and
    optimizer (rank 0 saves them), the global batch is the same, so one process carries on from it."""
    spec = tiny_spec_dict(tiny_model, lora={"maxSteps": 40, "saveSteps": 4, "evalSteps": 1000, "batchSize": 2})
    output = tmp_path / "shrunk"
    saved = _stopped_after_checkpoint_4(spec, output)
    code, err = _finish(_run(spec, output, 1))
    assert code == EXIT_OK, err[-3000:]
    resumed = [e["message"] for e in _events(output) if e.get("type") == "step" and e["index"] == 4
               and e["state"] == "Completed"][-1]
    assert f"resumed from checkpoint-{saved}" in resumed and resumed.startswith("40 optimizer steps"), resumed


def test_a_worker_killed_mid_training_fails_the_group_fast(tiny_model: Path, tmp_path: Path) -> None:
    """One worker SIGKILLed (an OOM kill, a lost GPU): the launcher stops the other instead of leaving it
    waiting in a collective, and the run exits 1 (a retry resumes from the last checkpoint)."""
    spec = tiny_spec_dict(tiny_model, lora={"maxSteps": 400, "saveSteps": 1000, "evalSteps": 1000,
                                            "batchSize": 2})
    output = tmp_path / "killed"
    proc = _run(spec, output, 2, start_new_session=True)
    deadline = time.monotonic() + 300
    while not _losses(output) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    workers = subprocess.run(["pgrep", "-f", f"lora_trainer.cli run {output.parent / 'killed.yaml'}", "-P",
                              str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[-1]), signal.SIGKILL)
    started = time.monotonic()
    code, err = _finish(proc, 300)
    assert code == EXIT_FAILED, err[-3000:]
    assert time.monotonic() - started < 60, "the group did not stop promptly"
    assert "exited with -9" in err
