"""What the benchmarks read about the operator process they start: CPU seconds and memory, from /proc."""

from __future__ import annotations

import os
import time
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_mib(pid: int, key: str) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(f"{key}:"))
    return int(line.split()[1]) / 1024


def max_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far."""
    return _status_mib(pid, "VmHWM")


def rss_mib(pid: int) -> float:
    """The process's resident memory now."""
    return _status_mib(pid, "VmRSS")


def settle(pid: int, timeout: float = 60.0) -> None:
    """Wait (at most ``timeout``) until the operator has digested the setup: under 10% of a core for 2 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(2)
        if cpu_seconds(pid) - before < 0.2:
            return
