"""Benchmark: what reporting progress costs the trainer and the apiserver.

Replays one synthetic run (10 step boundaries, N logged training steps every few ms) into
the real status sink against a real kube-apiserver, twice in the same run: with the
shipped throttle (one write per 3 s plus step boundaries) and with the baseline of writing
on every event. Prints API writes, bytes sent, time the training thread spent inside
``emit`` and wall time. Usage: ``python bench/status_writes.py [--events 300] [--gap 0.02]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lora_contract import progress  # noqa: E402
from lora_operator import builders  # noqa: E402
from lora_trainer.events import Emitter  # noqa: E402
from lora_trainer.kube_status import KubeStatusSink  # noqa: E402
from tests.cluster.controlplane import ControlPlane  # noqa: E402


def _kubectl(cp: ControlPlane, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run([str(cp.bin_dir / "kubectl"), *args], input=stdin, text=True, capture_output=True,
                          env=cp.env())
    if proc.returncode:
        raise SystemExit(f"kubectl {' '.join(args)}: {proc.stderr}")
    return proc.stdout


def _prepare(cp: ControlPlane, name: str, token_dir: Path) -> None:
    manifest = {"apiVersion": "lora.airepublic.io/v1alpha1", "kind": "LoraTrainingJob", "metadata": {"name": name},
                "spec": {"model": {"hubId": "a/b"}, "datasets": [{"builtin": "minion-handbook"}], "suspend": True}}
    objs = [manifest, builders.service_account(name, builders.OperatorConfig()), builders.status_role(name),
            builders.status_role_binding(name)]
    _kubectl(cp, "apply", "-n", "default", "-f", "-", stdin=yaml.safe_dump_all(objs))
    cp.write_token_dir("default", builders.service_account_name(name), token_dir)


class _CountingSink(KubeStatusSink):
    bytes_sent = 0

    def _send(self, patch: dict) -> bool:
        self.bytes_sent += len(json.dumps({"status": patch}))
        return super()._send(patch)


def replay(cp: ControlPlane, name: str, token_dir: Path, interval: float, events: int, gap: float) -> dict:
    sink = _CountingSink(name=name, namespace="default", server=cp.server, token_dir=token_dir,
                         min_interval=interval)
    emitter = Emitter([sink])
    in_emit = 0.0
    start = time.perf_counter()

    def emit(event: progress.TrainerEvent) -> None:
        nonlocal in_emit
        t0 = time.perf_counter()
        emitter.emit(event)
        in_emit += time.perf_counter() - t0

    for index in range(10):
        emit(progress.StepEvent(index=index, state="Active"))
        if index == 4:
            for step in range(1, events + 1):
                emit(progress.TrainEvent(step=step, totalSteps=events, loss=3.0 / step ** 0.3, learningRate=2e-4))
                time.sleep(gap)
        emit(progress.StepEvent(index=index, state="Completed"))
    sink.close(sink.status)
    return {"writes": sink.writes, "failures": sink.failures, "kib": sink.bytes_sent / 1024,
            "emit_ms": in_emit * 1000, "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between logged training steps")
    args = parser.parse_args()
    with ControlPlane() as cp, tempfile.TemporaryDirectory() as tmp:
        _kubectl(cp, "apply", "-f", str(ROOT / "crds"))
        for _ in range(30):  # a brand-new CRD may have no conditions yet, which `kubectl wait` rejects
            jsonpath = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
            if _kubectl(cp, "get", "crd/loratrainingjobs.lora.airepublic.io", "-o", jsonpath) == "True":
                break
            time.sleep(1)
        rows = []
        for label, interval in [("baseline: write every event", 0.0), ("shipped: throttle 3 s + boundaries", 3.0)]:
            name = "bench-" + ("base" if interval == 0 else "throttled")
            _prepare(cp, name, Path(tmp) / name)
            rows.append((label, replay(cp, name, Path(tmp) / name, interval, args.events, args.gap)))
    print(f"\n{args.events + 20} events, {args.gap * 1000:.0f} ms between training steps\n")
    print(f"{'variant':38} {'writes':>7} {'failed':>7} {'KiB sent':>9} {'ms in emit':>11} {'wall s':>7}")
    for label, r in rows:
        print(f"{label:38} {r['writes']:7d} {r['failures']:7d} {r['kib']:9.1f} {r['emit_ms']:11.1f} {r['wall_s']:7.1f}")
    base, ship = rows[0][1], rows[1][1]
    print(f"\nthrottle: {base['writes'] / max(ship['writes'], 1):.1f}x fewer writes, "
          f"{base['emit_ms'] / max(ship['emit_ms'], 1e-9):.1f}x less time blocking the training loop")


if __name__ == "__main__":
    main()
