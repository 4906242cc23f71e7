#!/usr/bin/env bash
# The one test command (README, CI): lint, then every test: unit, trainer, integration against a
# real kube-apiserver (built from Go modules on first use), and the SmolLM2 end-to-end runs.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not e2e"` or `scripts/test.sh tests/unit`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash tests/cluster/build_control_plane.sh >/dev/null
ruff check .
python -m lora_operator.crd "$(mktemp -d)" >/dev/null
python -m pytest -ra "$@"
