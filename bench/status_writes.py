"""Benchmark: what N chatty trainers cost the apiserver now that the operator alone writes the status.

Why: trainers POST a progress report every few seconds, so without a budget the apiserver's write load
would grow with the number of runs. This drives the real operator process (progress endpoint,
TokenReviews, StatusWriter) against a real kube-apiserver with N real ``ProgressReporter`` clients
holding real pod-bound tokens, twice in the same run: with no budget (every accepted report written at
once) and with the shipped one.

Runs are ``suspend: true``, each with a pod parked on a Node object that no kubelet runs: a token needs
its pod to exist, not to run, and no trainer competes for the CPU. (A pod bound to a node that does not
exist at all is deleted by the pod garbage collector after about a minute, and its token with it.)
A watch on the runs counts the writes: no spec is edited during the window, so every MODIFIED event is
one status write, the operator's own included. Lag runs from a step's emission in the trainer to the
first watch event that shows it. Operator CPU is over the window; max RSS is the process's peak, setup
included. Each variant's operator watches only its own namespace, and nothing is deleted: deleting 200
runs takes the operator a minute or more, and it all goes with the throwaway control plane.

Usage: ``python bench/status_writes.py [--runs 200] [--duration 60] [--gap 1.0] [--report-interval 3]
[--rate 20] [--run-interval 5] [--sync-interval 30]`` (about 5 minutes with the defaults on 2 cores).
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

from bench.process_stats import cpu_seconds, max_rss_mib, settle  # noqa: E402
from lora_contract import api, progress  # noqa: E402
from lora_operator import builders  # noqa: E402
from lora_trainer.progress_reporter import ProgressReporter  # noqa: E402
from tests.cluster.controlplane import ControlPlane  # noqa: E402
from tests.conftest import PARKING_NODE, Kubectl, OperatorProcess, make_tls, parked_pod, wait_for  # noqa: E402

GRACE_SECONDS = 15.0
BATCH = 50


@dataclass
class Variant:
    label: str
    budget: str
    rate: float
    run_interval: float


@dataclass
class Observed:
    """What the watch saw: when each write happened, and per run when and which training step it showed."""

    writes: list[float] = field(default_factory=list)
    steps: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))


def _ltj(name: str) -> dict:
    return {"apiVersion": f"{api.GROUP}/{api.VERSION}", "kind": "LoraTrainingJob", "metadata": {"name": name},
            "spec": {"model": {"hubId": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                     "datasets": [{"inline": [{"instruction": "Say hi", "output": "Hi there, friend!"}]}],
                     "suspend": True}}


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
        pod = core.create_namespaced_pod(ns, parked_pod(run, f"{run}-pod"))
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
    try:
        for event in stream:
            if stop.is_set():
                return
            if event["type"] != "MODIFIED":
                continue
            now, obj = time.monotonic(), event["object"]
            step = ((obj.get("status") or {}).get("trainer") or {}).get("trainingStep") or 0
            seen.writes.append(now)
            seen.steps[obj["metadata"]["name"]].append((now, step))
    except Exception:
        if not stop.is_set():  # once stopped, the control plane going away ends the stream
            raise


def drive(reporters: dict[str, ProgressReporter], steps: int, gap: float) -> dict[tuple[str, int], float]:
    """Emit training step k of every run, runs spread evenly over each ``gap``, then close every reporter;
    returns when each (run, step) went out."""
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


def first_shown(seen: list[tuple[float, int]]) -> dict[int, float]:
    """For each training step, when the run first showed it or a later one."""
    shown: dict[int, float] = {}
    top = 0
    for at, step in list(seen):
        for k in range(top + 1, step + 1):
            shown[k] = at
        top = max(top, step)
    return shown


def busiest(times: list[float], window: float) -> int:
    return max((bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure(cp: ControlPlane, kubectl: Kubectl, variant: Variant, index: int, args: argparse.Namespace,
            tmp: Path, tls: Path) -> dict[str, float]:
    ns, runs = f"bench-{index}", [f"run-{i:04d}" for i in range(args.runs)]
    token_dir = tmp / ns / "tokens"
    token_dir.mkdir(parents=True)
    os.environ.update(WATCH_NAMESPACE=ns, LORA_STATUS_WRITES_PER_SECOND=str(variant.rate),
                      LORA_STATUS_RUN_INTERVAL_SECONDS=str(variant.run_interval))
    operator = OperatorProcess(cp, tmp / ns, tls_dir=tls)
    operator.start()
    assert operator.proc is not None
    pid, api_client = operator.proc.pid, cp.api_client()
    try:
        prepare(kubectl, api_client, ns, runs, token_dir)
        settle(pid)
        since = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
            api.GROUP, api.VERSION, ns, api.PLURAL)["metadata"]["resourceVersion"]
        seen, stop = Observed(), threading.Event()
        watcher = threading.Thread(target=observe, args=(cp.api_client(), ns, since, seen, stop), daemon=True)
        watcher.start()
        base = f"https://127.0.0.1:{operator.port}/v1/namespaces/{ns}/loratrainingjobs"
        reporters = {run: ProgressReporter(f"{base}/{run}/report", token_dir / run, tls / "ca.crt",
                                           min_interval=args.report_interval) for run in runs}
        steps = int(args.duration / args.gap)
        cpu0, start = cpu_seconds(pid), time.monotonic()
        emitted = drive(reporters, steps, args.gap)
        closed = time.monotonic()
        while time.monotonic() < closed + GRACE_SECONDS and not all(
                steps in first_shown(seen.steps[run]) for run in runs):
            time.sleep(0.5)
        cpu, rss = cpu_seconds(pid) - cpu0, max_rss_mib(pid)
        if not watcher.is_alive():
            raise SystemExit("the watch on the runs ended early: its counts are incomplete")
        stop.set()
    finally:
        operator.stop()
    lags, missing = [], 0
    for run in runs:
        shown = first_shown(seen.steps[run])
        for k in range(1, steps + 1):
            if k in shown:
                lags.append(shown[k] - emitted[run, k])
            else:
                missing += 1
    return {"posted": sum(r.writes for r in reporters.values()), "failed": sum(r.failures for r in reporters.values()),
            "writes": sum(t >= start for t in seen.writes),
            "per_s": sum(start <= t <= closed for t in seen.writes) / (closed - start),
            "max_1s": busiest(seen.writes, 1.0), "max_5s": busiest(seen.writes, 5.0),
            "p50": percentile(lags, 0.5), "p95": percentile(lags, 0.95), "max": max(lags, default=float("nan")),
            "missing": missing, "cpu": cpu, "rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of training steps per run")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between a run's training steps")
    parser.add_argument("--report-interval", type=float, default=3.0, help="the trainer's min_interval")
    parser.add_argument("--rate", type=float, default=20.0, help="shipped LORA_STATUS_WRITES_PER_SECOND")
    parser.add_argument("--run-interval", type=float, default=5.0, help="shipped LORA_STATUS_RUN_INTERVAL_SECONDS")
    parser.add_argument("--sync-interval", type=float, default=30.0, help="shipped LORA_SYNC_INTERVAL_SECONDS")
    args = parser.parse_args()
    variants = [Variant("baseline", "none: every accepted report written", 100000, 0),
                Variant("shipped", f"{args.rate:g} writes/s, {args.run_interval:g} s per run", args.rate,
                        args.run_interval)]
    started = time.monotonic()
    with ControlPlane() as cp, tempfile.TemporaryDirectory() as tmp_name:
        os.environ["LORA_SYNC_INTERVAL_SECONDS"] = f"{args.sync_interval:g}"  # the shipped one, not the tests' 3 s
        tmp, kubectl = Path(tmp_name), Kubectl(cp)
        kubectl("apply", "-f", str(ROOT / "crds"))
        kubectl.wait_crd_established()
        kubectl("apply", "-f", "-", input=yaml.safe_dump(PARKING_NODE))
        tls = make_tls(tmp / "tls", "localhost", "127.0.0.1")
        rows = [(v, measure(cp, kubectl, v, i, args, tmp, tls)) for i, v in enumerate(variants)]
    print(f"\n{args.runs} runs, a training step every {args.gap:g} s for {args.duration:g} s, reports at most "
          f"every {args.report_interval:g} s, operator sync every {args.sync_interval:g} s; "
          f"{time.monotonic() - started:.0f} s in all\n")
    print("| variant | budget | runs | reports POSTed | failed | status writes | mean writes/s | max in 1 s "
          "| max in 5 s | lag p50 s | lag p95 s | lag max s | never shown | operator CPU s | operator max RSS MiB |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for v, r in rows:
        print(f"| {v.label} | {v.budget} | {args.runs} | {r['posted']} | {r['failed']} | {r['writes']} "
              f"| {r['per_s']:.1f} | {r['max_1s']} | {r['max_5s']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['max']:.1f} "
              f"| {r['missing']} | {r['cpu']:.1f} | {r['rss']:.0f} |")
    base, ship = rows[0][1], rows[1][1]
    print(f"\nwrites baseline/shipped: {base['writes'] / max(ship['writes'], 1):.1f}x; "
          f"p95 lag: baseline {base['p95']:.1f} s, shipped {ship['p95']:.1f} s")


if __name__ == "__main__":
    main()
