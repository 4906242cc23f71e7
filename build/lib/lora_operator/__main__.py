"""``lora-operator``: run the Kopf operator for LoraTrainingJob resources."""

from __future__ import annotations

import argparse
import asyncio
import os

import kopf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lora-operator", description=__doc__)
    parser.add_argument("--namespace", action="append", default=[],
                        help="watch only this namespace (repeatable); default: all namespaces "
                        "(env WATCH_NAMESPACE, comma-separated, also works)")
    parser.add_argument("--liveness", default=os.environ.get("LORA_LIVENESS_ENDPOINT"),
                        help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    namespaces = args.namespace or [n for n in os.environ.get("WATCH_NAMESPACE", "").split(",") if n]

    from lora_operator import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose)
    # One replica by design (see docs/operations.md): standalone skips Kopf's peering CRDs.
    asyncio.run(kopf.operator(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness,
    ))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
