#!/usr/bin/env bash
# Build SeaweedFS's `weed` (Apache-2.0), the S3-compatible server the artifact tests upload to, from its
# Go module, cached by version outside the repo. Prints the binary's path on stdout.
#
# Why a wrapper module: `go install .../weed@version` refuses a module whose go.mod has replace lines
# (SeaweedFS has one), so we build its main package from a module that requires it and repeats them.
# The first build takes about 10 minutes on 2 cores (it compiles every filer store SeaweedFS supports).
set -euo pipefail

SEAWEEDFS_VERSION="${SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"  # 4.53
CACHE="${LORA_OPERATOR_CACHE:-$HOME/.cache/lora-operator}"
BIN="$CACHE/seaweedfs-$SEAWEEDFS_VERSION/bin/weed"
if [[ -x "$BIN" ]]; then echo "$BIN"; exit 0; fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
WORK="$CACHE/seaweedfs-$SEAWEEDFS_VERSION/build"
mkdir -p "$WORK"
cd "$WORK"
gomod="$(go mod download -json "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
{
  printf 'module lora-operator.local/weedbuild\n\ngo %s\n\n' "$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
  echo "require github.com/seaweedfs/seaweedfs $SEAWEEDFS_VERSION"
  echo
  grep -E '^replace ' "$gomod" || true  # its replace lines, which a dependent module must repeat
} > go.mod
echo "[build_seaweedfs] building weed $SEAWEEDFS_VERSION (about 10 minutes the first time)" >&2
go build -trimpath -ldflags "-s -w" -o "$BIN.partial" github.com/seaweedfs/seaweedfs/weed
mv "$BIN.partial" "$BIN"
echo "$BIN"
