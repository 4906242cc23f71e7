"""``python -m tests.faults > docs/faults.md``: run the fault suite and print its table, with the command,
date and machine the figures come from (pytest's own output goes to stderr). Extra arguments go to pytest."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.faults.conftest import RECORD_ENV

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "python -m tests.faults > docs/faults.md"


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
               platform.processor() or "unknown CPU")
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python " \
           f"{platform.python_version()}"


def render(rows: list[dict], when: datetime, wall_s: float) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Faults injected while a run is in flight",
        "",
        f"Rendered by `{COMMAND}` on {when:%Y-%m-%d %H:%M} UTC, {machine()}; the suite took "
        f"{wall_s / 60:.1f} min. The same tests run in CI (`scripts/test.sh` collects `tests/faults/`), "
        "where they assert the final phase, reason, message, Events and artifacts, never the times.",
        "",
        "Each fault hits a tiny run (a 2-layer Llama, 120 LoRA steps, checkpoints every 40) on the real control "
        "plane (etcd, kube-apiserver, controller manager, scheduler) and the process node (`tests/cluster`), with "
        "the operator as a local process. The trainer is held still with SIGSTOP, or let run in slices, so each "
        "fault lands where the row says rather than where a sleep happens to end. \"Events\" counts every Event "
        "on the resource by reason; \"files match manifest.json\" means every file of `adapter/` and `merged/` is "
        "listed there with the size and SHA-256 it has on the volume, and nothing else is beside them. Time to "
        "converge runs from the end of the fault (the component back, the node re-registered; for a one-shot "
        "fault, its injection; for the deadline, the moment it passed) to the final phase in the status, polled "
        "every 0.2 s.",
        "",
        "| fault | expected | observed | time to converge (s) |",
        "|---|---|---|--:|",
    ]
    lines += [f"| {cell(r['fault'])} | {cell(r['expected'])} | {cell(r['observed'])} | {r['converge_s']:.1f} |"
              for r in rows]
    lines += [
        "",
        "The process node sends SIGTERM to the pod's process group and SIGKILL after the grace period, capped at "
        "10 s; a real kubelet does the same to the container's PID 1. The same stops on the real node (a pod "
        "deleted, a node drained, a run deleted, the operator pod deleted), with the trainer image as PID 1 and "
        "seconds until each pod was gone, are in [operations.md](operations.md#stopping-deleted-pods-drains-"
        "preemption) (`tests/realnode/test_real_node.py`).",
    ]
    return "\n".join(lines) + "\n"


def main(pytest_args: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "faults.json"
        started, when = time.monotonic(), datetime.now(UTC)
        code = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/faults",
                               *pytest_args], cwd=ROOT, env={**os.environ, RECORD_ENV: str(record)},
                              stdout=sys.stderr).returncode
        if code != 0:
            print(f"the fault suite failed (pytest exit {code}); docs/faults.md not rendered", file=sys.stderr)
            return code
        sys.stdout.write(render(json.loads(record.read_text()), when, time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
