"""Human-readable report of a LoraTrainingJob's status.

``python -m lora_operator.report NAME [-n NAMESPACE]`` reads the resource from the cluster
(current kubeconfig) and prints it; ``render`` is the pure part, also usable on the
status of a finished run read from ``report.json``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

MARKS = {"Completed": "✓", "Active": "▶", "Failed": "✗", "Skipped": "-", "Pending": "·"}
_SCORES = [("taskAccuracy", "task accuracy"), ("completeness", "completeness"), ("correctness", "correctness"),
           ("coherence", "coherence"), ("overall", "overall (0-100)"), ("weightedOverall", "complexity-weighted"),
           ("evalLoss", "held-out loss"), ("perplexity", "perplexity"), ("secondsPerAnswer", "seconds per answer"),
           ("items", "items graded")]


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def render(name: str, status: dict[str, Any]) -> str:
    lines = [f"LoraTrainingJob {name}: {status.get('phase', 'Pending')}"
             f" ({status.get('progress', 0)}%, {status.get('stepSummary', '')})"]
    if status.get("message"):
        lines.append(f"  {status['message']}")
    lines.append("")
    for step in status.get("steps") or []:
        msg = f"  {step['message']}" if step.get("message") else ""
        lines.append(f" {MARKS.get(step.get('state', 'Pending'), '?')} {step['name']:<16}{msg}")
    before, after = status.get("before") or {}, status.get("after") or {}
    if before or after:
        lines += ["", f" {'metric':<22}{'before':>12}{'after':>12}"]
        for key, label in _SCORES:
            if key in before or key in after:
                lines.append(f" {label:<22}{_num(before.get(key)):>12}{_num(after.get(key)):>12}")
    improvements = status.get("improvements") or {}
    if improvements:
        lines += ["", " improvements: " + ", ".join(f"{k} {_num(v)}" for k, v in improvements.items())]
    if status.get("loss") is not None:
        lines.append(f" final training loss {_num(status['loss'])}, held-out loss {_num(status.get('evalLoss'))}")
    if status.get("xp") is not None:
        lines.append(f" XP gained: {status['xp']} (from {status.get('trainItems', '?')} training items)")
    for kind, path in (status.get("artifacts") or {}).items():
        lines.append(f" {kind:<9} {path}")
    for cond in status.get("conditions") or []:
        if cond["status"] == "True":
            lines.append(f" condition {cond['type']}: {cond['reason']} {cond.get('message', '')}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_operator.report", description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("-n", "--namespace", default="default")
    args = parser.parse_args(argv)
    import kubernetes

    from lora_operator import api

    kubernetes.config.load_config()
    try:
        obj = kubernetes.client.CustomObjectsApi().get_namespaced_custom_object(
            api.GROUP, api.VERSION, args.namespace, api.PLURAL, args.name)
    except kubernetes.client.ApiException as err:
        print(f"cannot read loratrainingjob {args.namespace}/{args.name}: {err.reason}", file=sys.stderr)
        return 1
    print(render(args.name, obj.get("status") or {}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
