"""Benchmark: how fast one operator starts N runs applied at once, and what it costs while they sit idle.

Why: the operator re-derives a run's status on every Job/Pod event and on a 30 s timer per run. It used
to read the run, its Job and its pods from the API each time, so an idle operator's requests grew with
the number of runs; now it reads watch-fed caches (``lora_operator.cache``). This measures both, in one
run, on one throwaway control plane:

- ``before``: the operator of the commit before the caches (``--baseline``, default: the parent of the
  commit that added ``operator/lora_operator/cache.py``, or HEAD while it is uncommitted), run from a
  ``git worktree`` of that commit;
- ``now``: this checkout, with N runs and with N/5 runs (idle cost per run should not grow with N).

Each variant gets its own namespace and its own operator process watching only it, one after the other.
N ``suspend: true`` runs are created at once (16 client threads; suspended, so no pod competes for the
CPU). A watch on the namespace's Jobs gives the seconds from the first create until every run has its
Job (a second Job of any run is counted; a final LIST checks each run has exactly one), a watch on the
runs the seconds until every run shows phase Suspended. Then, once the operator has settled, an idle
window (``--idle``, default 3 sync intervals): the operator's CPU (utime + stime from /proc) as % of one
core, its resident memory at the end minus before the first run existed, and its API requests.

API requests are counted by the apiserver: the operator runs as its own user (a client certificate bound
to cluster-admin) and a FlowSchema sends that user's requests, and only those, into a flow of their own
(priority level workload-low, where the chart's ServiceAccount lands too), so
``apiserver_flowcontrol_dispatched_requests_total{flow_schema="lora-bench-operator"}`` counts every
request of the operator the apiserver executed; a watch counts once, when it starts. Both operators run
with ``--verbose`` (the tests' ``OperatorProcess``), the shipped 30 s sync interval and defaults otherwise.

Usage: ``python bench/operator_scale.py [--runs 500] [--idle 90] [--baseline REV]`` (about 12 minutes with
the defaults on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml
from kubernetes import client, watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.process_stats import cpu_seconds, rss_mib, settle  # noqa: E402
from lora_contract import api  # noqa: E402
from lora_operator import builders  # noqa: E402
from tests.cluster.controlplane import ControlPlane, client_certificate, write_kubeconfig  # noqa: E402
from tests.conftest import Kubectl, OperatorProcess, make_tls, wait_for  # noqa: E402

USER = "lora-bench-operator"
SYNC_INTERVAL = 30.0  # the shipped LORA_SYNC_INTERVAL_SECONDS
ACCESS = [
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": USER},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]},
    {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "metadata": {"name": USER},
     "spec": {"matchingPrecedence": 500, "priorityLevelConfiguration": {"name": "workload-low"},
              "distinguisherMethod": {"type": "ByUser"},
              "rules": [{"subjects": [{"kind": "User", "user": {"name": USER}}],
                         "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                            "clusterScope": True, "namespaces": ["*"]}],
                         "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}]}},
]


@dataclass
class Variant:
    label: str
    runs: int
    source: Path | None  # a worktree to run the operator from; None: this checkout


@dataclass
class Seen:
    """What the watches saw: per run, when its first Job appeared and the uids of its Jobs; when it first
    showed phase Suspended."""

    job_at: dict[str, float] = field(default_factory=dict)
    jobs: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    suspended_at: dict[str, float] = field(default_factory=dict)


def _ltj(name: str) -> dict:
    return {"apiVersion": f"{api.GROUP}/{api.VERSION}", "kind": "LoraTrainingJob", "metadata": {"name": name},
            "spec": {"model": {"hubId": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                     "datasets": [{"inline": [{"instruction": "Say hi", "output": "Hi there, friend!"}]}],
                     "suspend": True}}


def requests_served(kubectl: Kubectl) -> int:
    """The operator user's requests the apiserver has dispatched so far (all priority levels)."""
    total = 0
    for line in kubectl("get", "--raw", "/metrics").splitlines():
        if line.startswith("apiserver_flowcontrol_dispatched_requests_total{") and f'flow_schema="{USER}"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def _follow(stream, record, stop: threading.Event) -> None:
    try:
        for event in stream:
            if stop.is_set():
                return
            record(time.monotonic(), event["type"], event["object"])
    except Exception:
        if not stop.is_set():  # once stopped, the stream is cut by the next variant or the teardown
            raise


def watch_namespace(api_client: client.ApiClient, ns: str, seen: Seen, stop: threading.Event) -> None:
    batch, custom = client.BatchV1Api(api_client), client.CustomObjectsApi(api_client)

    def job(at: float, _type: str, obj) -> None:
        run = (obj.metadata.labels or {}).get(builders.JOB_LABEL)
        if run:
            seen.jobs[run].add(obj.metadata.uid)
            seen.job_at.setdefault(run, at)

    def run(at: float, _type: str, obj: dict) -> None:
        if (obj.get("status") or {}).get("phase") == "Suspended":
            seen.suspended_at.setdefault(obj["metadata"]["name"], at)

    for target, record in (
            (watch.Watch().stream(batch.list_namespaced_job, ns, timeout_seconds=3600), job),
            (watch.Watch().stream(custom.list_namespaced_custom_object, api.GROUP, api.VERSION, ns, api.PLURAL,
                                  timeout_seconds=3600), run)):
        threading.Thread(target=_follow, args=(target, record, stop), daemon=True).start()


def measure(cp: ControlPlane, kubectl: Kubectl, variant: Variant, index: int, args: argparse.Namespace,
            tmp: Path, tls: Path, kubeconfig: Path) -> dict[str, float]:
    ns, runs = f"scale-{index}", [f"run-{i:04d}" for i in range(variant.runs)]
    kubectl("create", "namespace", ns)
    os.environ["WATCH_NAMESPACE"] = ns
    if variant.source:
        os.environ["PYTHONPATH"] = f"{variant.source / 'contract'}:{variant.source / 'operator'}"
    else:
        os.environ.pop("PYTHONPATH", None)
    (tmp / ns).mkdir()
    operator = OperatorProcess(cp, tmp / ns, kubeconfig=kubeconfig, tls_dir=tls)
    operator.start()
    assert operator.proc is not None
    pid, api_client = operator.proc.pid, cp.api_client()
    seen, stop = Seen(), threading.Event()
    try:
        settle(pid)
        rss_empty = rss_mib(pid)
        watch_namespace(api_client, ns, seen, stop)
        time.sleep(1)  # the watches are established
        custom = client.CustomObjectsApi(api_client)
        requests0, start = requests_served(kubectl), time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda r: custom.create_namespaced_custom_object(
                api.GROUP, api.VERSION, ns, api.PLURAL, _ltj(r)), runs))
        applied = time.monotonic() - start
        wait_for("every run Suspended", lambda: [len(seen.suspended_at) == len(runs) and len(seen.job_at) == len(runs),
                                                 f"{len(seen.job_at)} Jobs, {len(seen.suspended_at)} Suspended"],
                 timeout=600, interval=1)
        started_requests = requests_served(kubectl) - requests0
        settle(pid)
        cpu0, requests0, idle0 = cpu_seconds(pid), requests_served(kubectl), time.monotonic()
        time.sleep(args.idle)
        cpu, requests, idle = cpu_seconds(pid) - cpu0, requests_served(kubectl) - requests0, time.monotonic() - idle0
        rss = rss_mib(pid)
        listed = client.BatchV1Api(api_client).list_namespaced_job(ns).items
    finally:
        stop.set()
        operator.stop()
    per_run = defaultdict(int)
    for job in listed:
        per_run[(job.metadata.labels or {}).get(builders.JOB_LABEL)] += 1
    return {"applied": applied, "jobs_s": max(seen.job_at.values()) - start,
            "suspended_s": max(seen.suspended_at.values()) - start,
            "not_one": sum(per_run.get(r, 0) != 1 or len(seen.jobs[r]) > 1 for r in runs),
            "start_requests": started_requests / len(runs), "req_s": requests / idle, "cpu": 100 * cpu / idle,
            "rss": rss, "rss_run_kib": 1024 * (rss - rss_empty) / len(runs)}


def default_baseline() -> str:
    """The commit before the watch-fed caches (HEAD while they are not committed)."""
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "operator/lora_operator/cache.py"],
                           cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    return f"{added[-1]}^" if added else "HEAD"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--idle", type=float, default=3 * SYNC_INTERVAL, help="seconds of the idle window")
    parser.add_argument("--baseline", default=None, help="git revision of the 'before' operator")
    args = parser.parse_args()
    baseline = subprocess.run(["git", "rev-parse", "--short", args.baseline or default_baseline()], cwd=ROOT,
                              check=True, capture_output=True, text=True).stdout.strip()
    started = time.monotonic()
    with ControlPlane() as cp, tempfile.TemporaryDirectory() as tmp_name:
        tmp, kubectl = Path(tmp_name), Kubectl(cp)
        worktree = tmp / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), baseline], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            os.environ["LORA_SYNC_INTERVAL_SECONDS"] = f"{SYNC_INTERVAL:g}"  # the shipped one, not the tests' 3 s
            kubectl("apply", "-f", str(ROOT / "crds"))
            kubectl.wait_crd_established()
            kubectl("apply", "-f", "-", input=yaml.safe_dump_all(ACCESS))
            assert cp.workdir is not None, "needs its own control plane (the CA key signs the operator's user)"
            pki, kubeconfig = cp.workdir / "pki", tmp / "operator.kubeconfig"
            client_certificate(pki, "bench-operator", USER, "lora-bench")
            write_kubeconfig(kubeconfig, cp.server, pki, user="bench-operator")
            tls = make_tls(tmp / "tls", "localhost", "127.0.0.1")
            variants = [Variant(f"before ({baseline})", args.runs, worktree),
                        Variant("now", max(1, args.runs // 5), None), Variant("now", args.runs, None)]
            rows = [(v, measure(cp, kubectl, v, i, args, tmp, tls, kubeconfig)) for i, v in enumerate(variants)]
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False)
    print(f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPU cores, "
          f"Python {platform.python_version()}, sync interval {SYNC_INTERVAL:g} s, idle window {args.idle:g} s; "
          f"{time.monotonic() - started:.0f} s in all\n")
    print("| operator | runs | s to create them | s until every run has its Job | runs without exactly one Job "
          "| s until all Suspended | API requests per run to start | idle API requests/s | idle requests/s per "
          "100 runs | idle CPU % of a core | idle CPU % per 100 runs | RSS MiB | RSS KiB per run |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for v, r in rows:
        print(f"| {v.label} | {v.runs} | {r['applied']:.1f} | {r['jobs_s']:.1f} | {r['not_one']} "
              f"| {r['suspended_s']:.1f} | {r['start_requests']:.1f} | {r['req_s']:.2f} "
              f"| {100 * r['req_s'] / v.runs:.2f} | {r['cpu']:.1f} | {100 * r['cpu'] / v.runs:.2f} | {r['rss']:.0f} "
              f"| {r['rss_run_kib']:.0f} |")


if __name__ == "__main__":
    main()
