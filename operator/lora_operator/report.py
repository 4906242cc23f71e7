"""Human-readable report of a LoraTrainingJob's status.

``python -m lora_operator.report NAME [-n NAMESPACE]`` reads the resource from the cluster
(current kubeconfig) and prints it; ``render`` is the pure part, also usable on a finished
run's ``report.json`` (``LoraTrainingJobStatus(trainer=report["trainer"], xp=report["xp"])``).
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from lora_contract.api import GROUP, PLURAL, VERSION, LoraTrainingJobStatus, TrainerStatus
from lora_contract.rendering import MARKS, report_table


def render(name: str, status: LoraTrainingJobStatus) -> str:
    """The whole report of one resource: phase, step checklist, report table, true conditions."""
    trainer = status.trainer or TrainerStatus()
    lines = [f"LoraTrainingJob {name}: {status.phase or 'Pending'}"
             f" ({trainer.progress or 0}%, {trainer.step_summary or ''})"]
    if status.message:
        lines.append(f"  {status.message}")
    lines.append("")
    for step in trainer.steps:
        msg = f"  {step.message}" if step.message else ""
        lines.append(f" {MARKS[step.state]} {step.name:<16}{msg}".rstrip())
    lines += ["", *report_table(trainer, status.xp)]
    lines += [f"  condition {c.type}: {c.reason} {c.message}".rstrip()
              for c in status.conditions if c.status == "True"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_operator.report", description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("-n", "--namespace", default="default")
    args = parser.parse_args(argv)
    import kubernetes

    kubernetes.config.load_config()
    try:
        obj = kubernetes.client.CustomObjectsApi().get_namespaced_custom_object(
            GROUP, VERSION, args.namespace, PLURAL, args.name)
    except kubernetes.client.ApiException as err:
        print(f"cannot read loratrainingjob {args.namespace}/{args.name}: {err.reason}", file=sys.stderr)
        return 1
    try:
        status = LoraTrainingJobStatus.model_validate(obj.get("status") or {})
    except ValidationError as err:
        print(f"cannot read the status of loratrainingjob {args.namespace}/{args.name}: {err}", file=sys.stderr)
        return 1
    print(render(args.name, status))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
