"""Human-readable report of a LoraTrainingJob's status.

``python -m lora_operator.report NAME [-n NAMESPACE]`` reads the resource from the cluster
(current kubeconfig) and prints it; ``render`` is the pure part, also usable on the
status of a finished run read from ``report.json``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

MARKS = {"Completed": "✓", "Active": "▶", "Failed": "✗", "Pending": "·", "Skipped": "-"}
# (label, GradeScores field) rows of the final report table.
REPORT_ROWS: tuple[tuple[str, str], ...] = (
    ("task accuracy", "taskAccuracy"),
    ("completeness", "completeness"),
    ("correctness", "correctness"),
    ("coherence", "coherence"),
    ("overall", "overall"),
    ("weighted overall", "weightedOverall"),
    ("held-out loss", "evalLoss"),
    ("perplexity", "perplexity"),
    ("seconds / answer", "secondsPerAnswer"),
    ("tokens / second", "tokensPerSecond"),
    ("graded items", "items"),
)


def number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if abs(value) < 10 else f"{value:.1f}"


def report_table(status: dict[str, Any]) -> list[str]:
    """Before/after table, improvements, XP and artifacts of a finished run."""
    before, after = status.get("before") or {}, status.get("after") or {}
    lines: list[str] = []
    if before or after:
        lines.append(f"  {'':<18}{'before':>10}{'after':>10}{'change':>10}")
        for label, key in REPORT_ROWS:
            b, a = before.get(key), after.get(key)
            if b is None and a is None:
                continue
            change = "" if b is None or a is None or key == "items" else f"{a - b:+.4g}"
            lines.append(f"  {label:<18}{number(b):>10}{number(a):>10}{change:>10}")
    imp = status.get("improvements") or {}
    if imp:
        described = {
            "qualityPercent": "quality {:+.1f}%", "qualityPoints": "quality {:+.1f} points",
            "speedPercent": "speed {:+.1f}%", "evalLossDelta": "held-out loss {:+.4f}",
            "perplexityPercent": "perplexity {:+.1f}%",
        }
        lines.append("  improvements: " + ", ".join(fmt.format(imp[k]) for k, fmt in described.items()
                                                    if imp.get(k) is not None))
    if status.get("xp") is not None:
        lines.append(f"  XP: {status['xp']} for {status.get('trainItems', 0)} training items")
    for name, path in (status.get("artifacts") or {}).items():
        lines.append(f"  {name}: {path}")
    return lines


def render(name: str, status: dict[str, Any]) -> str:
    """The whole report of one resource: phase, step checklist, report table, true conditions."""
    lines = [f"LoraTrainingJob {name}: {status.get('phase', 'Pending')}"
             f" ({status.get('progress', 0)}%, {status.get('stepSummary', '')})"]
    if status.get("message"):
        lines.append(f"  {status['message']}")
    lines.append("")
    for step in status.get("steps") or []:
        msg = f"  {step['message']}" if step.get("message") else ""
        lines.append(f" {MARKS.get(step.get('state', 'Pending'), '?')} {step['name']:<16}{msg}".rstrip())
    lines += ["", *report_table(status)]
    for cond in status.get("conditions") or []:
        if cond["status"] == "True":
            lines.append(f"  condition {cond['type']}: {cond['reason']} {cond.get('message', '')}".rstrip())
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
