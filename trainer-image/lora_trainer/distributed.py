"""Data-parallel training over several processes (DDP), launched by torchrun's launcher (docs/trainer.md).

``lora-trainer run --nproc-per-node N`` starts N worker processes of itself through
``torch.distributed.launcher`` (what the ``torchrun`` command runs: its c10d rendezvous, its agent that
watches the workers and stops them all when one dies, its SIGTERM forwarding). Every worker loads the same
data and model and trains its shard of each batch (the HF Trainer wraps the model in DDP); **rank 0 alone**
grades before and after, saves, merges, validates and reports progress, so the run reads exactly as a
one-process run does. What is ours on top of the launcher:

- the **global batch is the spec's** (batchSize x gradientAccumulationSteps items per optimizer step) for any
  number of processes: each rank gets a share of it (``per_rank_batch``), and the number of optimizer steps
  is the one-process count, so the data, the steps and the XP do not depend on the world size;
- **one decision per step**: a stop signal reaching any rank (a pod deleted, a node drained) is agreed on by
  all of them (``agree``), so they save the same checkpoint and stop together instead of one waiting forever
  for the others; the checkpoint's completion marker is written once every rank has saved its part;
- the workers' **exit codes survive** the launcher (it reports any failure as 1): 2 (invalid spec or data: do
  not retry) and 143 (stopped, a checkpoint saved: resume) reach the Job's pod-failure policy as they do from
  one process.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import torch

from lora_contract.wire import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID_INPUT,
    EXIT_OK,
    GATHER_PORT,
    MASTER_ADDR_ENV,
    MASTER_PORT_ENV,
    NNODES_ENV,
    NODE_RANK_ENV,
    RENDEZVOUS_PORT,
)
from lora_trainer.errors import InvalidInput

# Rank 0 grades the base model while the others wait in their first collective: long enough for that on a
# big model (a dead rank is noticed by the launcher at once; a hung one by the operator's stall timeout).
COLLECTIVE_TIMEOUT = timedelta(hours=2)
RENDEZVOUS_TIMEOUT = 1800  # seconds the pods of a group wait for each other to start (image pulls, scheduling)


@dataclass(frozen=True)
class World:
    """This process's place among the workers, from the variables torchrun's launcher sets."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                   int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def per_rank_batch(batch: int, accumulation: int, world: int) -> tuple[int, int]:
    """(per-device batch, accumulation) for each of ``world`` ranks so that an optimizer step sees the same
    ``batch x accumulation`` items as one process does: the largest per-device batch up to ``batch`` that
    divides the rank's share (fewer micro-batches to accumulate)."""
    total = batch * accumulation
    if total % world:
        raise InvalidInput(f"the global batch lora.batchSize x lora.gradientAccumulationSteps = {total} items "
                           f"cannot be split evenly over {world} processes: make it a multiple of {world}")
    share = total // world
    device = max(d for d in range(1, min(batch, share) + 1) if share % d == 0)
    return device, share // device


def init(world: World, cuda: bool) -> None:
    """Join the workers' process group (before the Trainer, which then uses it), one GPU per process."""
    if not world.distributed or torch.distributed.is_initialized():
        return
    if cuda:
        torch.cuda.set_device(world.local_rank)
    torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def agree(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any of them (one small all-reduce)."""
    if not torch.distributed.is_initialized():
        return flag
    value = torch.tensor([1 if flag else 0], device="cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def first_failure(failure: tuple[int, int, str] | None) -> tuple[int, int, int, str] | None:
    """Every worker's outcome of the steps before training, exchanged once: ``failure`` is this worker's
    (step, exit code, message) or None; returns the lowest rank's failure as (rank, step, code, message).

    Why: the other workers skip step 0, so they reach a bad spec's error in step 3 while rank 0 is still
    grading; were they to exit at once, the launcher would stop rank 0 and its report would say "stopped",
    not why. They wait here instead, and rank 0 reports their failure as the run's.
    """
    if not torch.distributed.is_initialized():
        return None if failure is None else (0, *failure)
    outcomes: list[tuple[int, int, str] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(outcomes, failure)
    return next(((rank, *outcome) for rank, outcome in enumerate(outcomes) if outcome), None)


def exit_code_of(codes: list[int]) -> int:
    """The run's exit code from its workers': invalid input wins (no retry helps), then a stop signal (the
    retry resumes), then any other failure; a worker killed by a signal (negative code) is a failure."""
    if all(code == EXIT_OK for code in codes):
        return EXIT_OK
    for meaningful in (EXIT_INVALID_INPUT, EXIT_INTERRUPTED):
        if meaningful in codes:
            return meaningful
    return EXIT_FAILED


@dataclass(frozen=True)
class Group:
    """The pods of a run over several nodes, from the operator's PET_* variables (``lora_contract.wire``)."""

    nodes: int = 1
    node_rank: int = 0
    master: str = ""  # host:port of node rank 0, where the others meet it

    @classmethod
    def from_env(cls) -> Group:
        nodes = int(os.environ.get(NNODES_ENV, "1"))
        if nodes == 1:
            return cls()
        return cls(nodes, int(os.environ[NODE_RANK_ENV]),
                   f"{os.environ[MASTER_ADDR_ENV]}:{os.environ.get(MASTER_PORT_ENV, RENDEZVOUS_PORT)}")


class GroupNotFormed(Exception):
    """The pods of a group did not all check in within the rendezvous timeout."""


def _checked_in(connection: socket.socket) -> bool:
    """Whether a peer's connection (non-blocking) is still open: a pod deleted after checking in closed it."""
    try:
        return connection.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True  # open, nothing sent: as expected
    except OSError:
        return False


def gather(group: Group, timeout: float = RENDEZVOUS_TIMEOUT, poll: float = 1.0) -> None:
    """Wait, in Python, until every pod of ``group`` has started, before torchrun's rendezvous.

    Why: torch's static rendezvous waits for the others inside C++ (up to RENDEZVOUS_TIMEOUT), where a Python
    signal handler cannot run, so a pod deleted while its group formed (the others still pulling images, not
    yet scheduled) ignored its SIGTERM, held its GPU for the whole grace period and was killed (137), which
    counts as a dead worker. Here every wait is a one-second socket call: a SIGTERM raises ``Interrupted`` at
    once (exit 143, a disruption). Node rank 0 listens on the master port + 1 (``GATHER_PORT``, a port of the
    run's headless Service); each other pod connects, says its node rank and waits for "go", which rank 0 sends
    once every rank's connection is open (a replacement pod's connection takes the place of the one it
    replaces). torchrun's rendezvous then forms in seconds."""
    host, port = group.master.rsplit(":", 1)
    port_offset = GATHER_PORT - RENDEZVOUS_PORT  # the master port + 1, whichever master port the pods were given
    if group.node_rank == 0:
        _gather_as_rank_0(int(port) + port_offset, group.nodes, timeout, poll)
    else:
        _check_in(host, int(port) + port_offset, group.node_rank, timeout, poll)


def _gather_as_rank_0(port: int, nodes: int, timeout: float, poll: float) -> None:
    deadline = time.monotonic() + timeout
    peers: dict[int, socket.socket] = {}
    with socket.create_server(("", port), reuse_port=False) as server:
        server.settimeout(poll)
        while True:
            for rank in [rank for rank, c in peers.items() if not _checked_in(c)]:
                peers.pop(rank).close()  # a pod deleted after checking in: its replacement checks in again
            if len(peers) == nodes - 1:
                break
            if time.monotonic() > deadline:
                raise GroupNotFormed(f"{len(peers) + 1} of {nodes} pods started within {timeout:g} s")
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            connection.settimeout(poll)
            try:
                rank = int(connection.recv(16).decode().strip())
            except (OSError, ValueError):
                connection.close()
                continue
            if rank in peers:
                peers[rank].close()
            connection.setblocking(False)
            peers[rank] = connection
        for connection in peers.values():
            with connection:
                connection.setblocking(True)
                connection.sendall(b"go\n")


def _check_in(host: str, port: int, node_rank: int, timeout: float, poll: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=poll) as connection:
                connection.sendall(f"{node_rank}\n".encode())
                while time.monotonic() < deadline:
                    try:
                        answer = connection.recv(16)
                    except TimeoutError:
                        continue
                    if answer.startswith(b"go"):
                        return
                    break  # rank 0's pod went away: check in with its replacement
        except OSError:  # not resolvable or not listening yet
            time.sleep(poll)
    raise GroupNotFormed(f"node rank 0 at {host}:{port} did not gather the group within {timeout:g} s")


def launch(nproc: int, argv: list[str], grace_seconds: int, group: Group | None = None) -> int:
    """Run ``lora-trainer <argv>`` as ``nproc`` workers on this machine and wait; the run's exit code.
    ``grace_seconds``: how long the workers get, after a SIGTERM, to save and exit. One node: torchrun
    --standalone (c10d on 127.0.0.1). Several (``group``): torchrun --node-rank --master-addr, whose static
    rendezvous makes the pod of index 0 node rank 0, so global rank 0 (the one that reports) is that pod."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    group = group or Group()
    if group.nodes > 1:
        try:
            gather(group)
        except GroupNotFormed as err:
            print(f"lora-trainer: {err}", file=sys.stderr)
            return EXIT_FAILED
    if group.nodes == 1:
        rendezvous = {"rdzv_backend": "c10d", "rdzv_endpoint": "127.0.0.1:0", "run_id": f"lora-{uuid.uuid4().hex[:8]}"}
    else:  # rank 0's pod serves the store; the others wait up to RENDEZVOUS_TIMEOUT for it (its image pull)
        rendezvous = {"rdzv_backend": "static", "rdzv_endpoint": group.master, "run_id": "lora-group",
                      "rdzv_configs": {"rank": group.node_rank, "timeout": RENDEZVOUS_TIMEOUT}}
    config = LaunchConfig(min_nodes=group.nodes, max_nodes=group.nodes, nproc_per_node=nproc, max_restarts=0,
                          shutdown_timeout=grace_seconds, monitor_interval=0.5, **rendezvous)
    try:
        elastic_launch(config, sys.executable)("-m", "lora_trainer.cli", *argv)
    except ChildFailedError as err:
        rank, first = err.get_first_failure()
        print(f"lora-trainer: worker rank {rank} exited with {first.exitcode}", file=sys.stderr)
        return exit_code_of([failure.exitcode for failure in err.failures.values()])
    except SignalException:  # the launcher forwarded it; the workers saved a checkpoint and stopped
        return EXIT_INTERRUPTED
    return EXIT_OK
