#!/usr/bin/env bash
# The one test command (README, CI): lint, then every test: unit, trainer, integration against a
# real kube-apiserver (built from Go modules on first use), and the SmolLM2 end-to-end runs.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not e2e"` or `scripts/test.sh tests/unit`.
set -euo pipefail
cd "$(dirname "$0")/.."
# SeaweedFS, the artifact tests' S3 server, compiles for about 10 minutes the first time: overlap that with the
# venv's downloads. Its fixture builds it too (and shows the error) should this background build fail.
mkdir -p "${LORA_OPERATOR_CACHE:-$HOME/.cache/lora-operator}"
bash tests/cluster/build_seaweedfs.sh >"${LORA_OPERATOR_CACHE:-$HOME/.cache/lora-operator}/seaweedfs-build.log" 2>&1 &
seaweedfs_build=$!
source scripts/env.sh
bash tests/cluster/build_control_plane.sh >/dev/null
wait "$seaweedfs_build" || echo "[test] building SeaweedFS failed; see ~/.cache/lora-operator/seaweedfs-build.log" >&2
ruff check .
python -m lora_operator.crd "$(mktemp -d)" >/dev/null
python -m pytest -ra "$@"
