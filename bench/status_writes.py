"""Benchmark: what N chatty trainers cost the apiserver now that the operator alone writes the status.

Why: trainers POST a progress report every few seconds; without a budget every accepted report would
be a status write, so the apiserver's write load would grow with the number of runs. This measures the
real operator process (progress endpoint, TokenReviews, StatusWriter) against a real kube-apiserver,
with N real ``ProgressReporter`` clients holding real pod-bound tokens, twice in the same run: with no
budget (every accepted report written at once) and with the shipped one.

Runs are ``suspend: true`` with a parked pod each (bound to a node that does not exist): a token needs
a pod to exist, not to run, and no kubelet or trainer competes for the CPU. A watch on the runs counts
the writes: every MODIFIED event is one write of a run, and no spec is edited during the window, so
they are status writes (the operator's own included: ``LORA_SYNC_INTERVAL_SECONDS`` is the test
harness's 3 s). Lag is from a step's emission in the trainer to the first watch event showing it.
Operator CPU is over the window; its max RSS is the process's peak, setup included.

Usage: ``python bench/status_writes.py [--runs 200] [--duration 60] [--gap 1.0] [--report-interval 3]
[--rate 20] [--run-interval 5]`` (about 6 minutes with the defaults on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from kubernetes import client, watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lora_contract import api, progress  # noqa: E402
from lora_operator import builders  # noqa: E402
from lora_trainer.progress_reporter import ProgressReporter  # noqa: E402
from tests.cluster.controlplane import ControlPlane  # noqa: E402
from tests.conftest import Kubectl, OperatorProcess, make_tls, wait_for  # noqa: E402

GRACE_SECONDS = 15.0
BATCH = 50


@dataclass
class Variant:
    label: str
    rate: float
    run_interval: float


@dataclass
class Observed:
    """What the watch saw: every write of a run, when, and the training step it showed."""

    writes: list[float] = field(default_factory=list)
    steps: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))


def _ltj(name: str) -> dict:
    return {"apiVersion": f"{api.GROUP}/{api.VERSION}", "kind": "LoraTrainingJob", "metadata": {"name": name},
            "spec": {"model": {"hubId": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                     "datasets": [{"inline": [{"instruction": "Say hi", "output": "Hi there, friend!"}]}],
                     "suspend": True}}


def _pod(run: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{run}-pod", "labels": {builders.JOB_LABEL: run,
                                                          "app.kubernetes.io/managed-by": builders.MANAGED_BY}},
            "spec": {"serviceAccountName": builders.service_account_name(run), "nodeName": "no-such-node",
                     "automountServiceAccountToken": False, "containers": [{"name": "trainer", "image": "none"}]}}


def prepare(kubectl: Kubectl, api_client: client.ApiClient, ns: str, runs: list[str], token_dir: Path) -> None:
    """N suspended runs, each with a parked pod and a token bound to it in ``token_dir/<run>``."""
    kubectl("create", "namespace", ns)
    for i in range(0, len(runs), BATCH):
        kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all([_ltj(r) for r in runs[i:i + BATCH]]))
    custom = client.CustomObjectsApi(api_client)

    def suspended() -> list:
        items = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL)["items"]
        count = sum((o.get("status") or {}).get("phase") == "Suspended" for o in items)
        return [count == len(runs), f"{count}/{len(runs)} Suspended"]

    wait_for("all runs Suspended", suspended, timeout=300, interval=2)
    core = client.CoreV1Api(api_client)

    def pod_and_token(run: str) -> None:
        pod = core.create_namespaced_pod(ns, _pod(run))
        ref = client.V1BoundObjectReference(api_version="v1", kind="Pod", name=pod.metadata.name,
                                            uid=pod.metadata.uid)
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[builders.TOKEN_AUDIENCE], expiration_seconds=3600, bound_object_ref=ref))
        token = core.create_namespaced_service_account_token(builders.service_account_name(run), ns, request)
        (token_dir / run).write_text(token.status.token)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(pod_and_token, runs))


def observe(api_client: client.ApiClient, ns: str, since: str, seen: Observed, stop: threading.Event) -> None:
    custom = client.CustomObjectsApi(api_client)
    stream = watch.Watch().stream(custom.list_namespaced_custom_object, api.GROUP, api.VERSION, ns, api.PLURAL,
                                  resource_version=since, timeout_seconds=3600)
    for event in stream:
        if stop.is_set():
            return
        if event["type"] != "MODIFIED":
            continue
        now, obj = time.monotonic(), event["object"]
        step = ((obj.get("status") or {}).get("trainer") or {}).get("trainingStep") or 0
        seen.writes.append(now)
        seen.steps[obj["metadata"]["name"]].append((now, step))


def drive(reporters: dict[str, ProgressReporter], steps: int, gap: float) -> dict[tuple[str, int], float]:
    """Emit training step k of every run, runs spread evenly over each ``gap``; returns when each went out."""
    status = {run: progress.initial_status() for run in reporters}
    emitted: dict[tuple[str, int], float] = {}
    start = time.monotonic()
    for k in range(1, steps + 1):
        for i, (run, reporter) in enumerate(reporters.items()):
            time.sleep(max(0.0, start + (k - 1 + i / len(reporters)) * gap - time.monotonic()))
            event = progress.TrainEvent(step=k, totalSteps=steps, loss=3.0 / k ** 0.3, learningRate=2e-4)
            status[run] = progress.reduce(status[run], event)
            emitted[run, k] = time.monotonic()
            reporter.emit(event, status[run])
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda run: reporters[run].close(status[run]), reporters))
    return emitted


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def max_rss_mib(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def visible_at(seen: list[tuple[float, int]], step: int) -> float | None:
    """When the run first showed ``step`` or a later one."""
    return next((t for t, s in seen if s >= step), None)


def busiest(times: list[float], window: float) -> int:
    return max((bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure(cp: ControlPlane, kubectl: Kubectl, variant: Variant, index: int, args: argparse.Namespace,
            tmp: Path, tls: Path) -> dict:
    os.environ.update(LORA_STATUS_WRITES_PER_SECOND=str(variant.rate),
                      LORA_STATUS_RUN_INTERVAL_SECONDS=str(variant.run_interval))
    operator = OperatorProcess(cp, tmp, tls_dir=tls)
    operator.start()
    assert operator.proc is not None
    ns, runs = f"bench-{index}", [f"run-{i:04d}" for i in range(args.runs)]
    token_dir = tmp / ns
    token_dir.mkdir()
    api_client = cp.api_client()
    try:
        prepare(kubectl, api_client, ns, runs, token_dir)
        since = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
            api.GROUP, api.VERSION, ns, api.PLURAL)["metadata"]["resourceVersion"]
        seen, stop = Observed(), threading.Event()
        threading.Thread(target=observe, args=(cp.api_client(), ns, since, seen, stop), daemon=True).start()
        base = f"https://127.0.0.1:{operator.port}/v1/namespaces/{ns}/loratrainingjobs"
        reporters = {run: ProgressReporter(f"{base}/{run}/report", token_dir / run, tls / "ca.crt",
                                           min_interval=args.report_interval) for run in runs}
        steps = int(args.duration / args.gap)
        cpu0, start = cpu_seconds(operator.proc.pid), time.monotonic()
        emitted = drive(reporters, steps, args.gap)
        closed = time.monotonic()
        wait_for("every run's last step to show", lambda: all(
            visible_at(seen.steps[run], steps) is not None for run in runs), timeout=GRACE_SECONDS, interval=0.5) \
            if True else None
    except AssertionError:
        pass
    finally:
        pass
    raise NotImplementedError
