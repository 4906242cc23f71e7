#!/usr/bin/env bash
# Build a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl), the real node's kubelet and kube-proxy, and helm from Go modules,
# cached by version outside the repo.
#
# Why from Go modules: no container engine and no binary downloads here; the Go module
# proxy is reachable. k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces the
# k8s.io/* staging modules with local paths), so we build it from a small wrapper module
# whose replace list is generated from the go.mod the proxy serves.
#
# Prints the bin directory on stdout. Honours KUBEBUILDER_ASSETS: if it already holds
# etcd and kube-apiserver, nothing is built.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.5}"
HELM_VERSION="${HELM_VERSION:-v3.19.0}"
CACHE="${LORA_OPERATOR_CACHE:-$HOME/.cache/lora-operator}"
BIN="$CACHE/k8s-$KUBE_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { echo "[build_control_plane] $*" >&2; }
# The header of a wrapper module's go.mod: our module name and the local Go version.
gomod_header() { printf 'module lora-operator.local/%s\n\ngo %s\n\n' "$1" "$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"; }

if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/kube-apiserver" && -x "$KUBEBUILDER_ASSETS/etcd" ]]; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy helm)
missing=0
for b in "${want[@]}"; do [[ -x "$BIN/$b" ]] || missing=1; done
if [[ $missing == 0 ]]; then echo "$BIN"; exit 0; fi

mkdir -p "$BIN"
WORK="$CACHE/build-$KUBE_VERSION"
mkdir -p "$WORK/kube" "$WORK/etcd" "$WORK/helm"
minor_patch="${KUBE_VERSION#v1.}"
staging_version="v0.$minor_patch"

# --- kubernetes: wrapper module with generated replace list ------------------------
kube_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
kube_missing=()
for b in "${kube_cmds[@]}"; do [[ -x "$BIN/$b" ]] || kube_missing+=("k8s.io/kubernetes/cmd/$b"); done
if (( ${#kube_missing[@]} )); then
  log "resolving k8s.io/kubernetes@$KUBE_VERSION"
  cd "$WORK/kube"
  gomod_path="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  {
    gomod_header kubebuild
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    # every `k8s.io/X => ./staging/src/k8s.io/X` becomes `k8s.io/X => k8s.io/X v0.MINOR.PATCH`
    grep -E '^\s*k8s\.io/[^ ]+ => \./staging/src/' "$gomod_path" \
      | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
  } > go.mod
  log "replace lines: $(grep -c '^replace' go.mod)"
  pkg="k8s.io/component-base/version"
  cpkg="k8s.io/client-go/pkg/version"
  major=1; minor="${minor_patch%%.*}"
  ld="-s -w"
  for p in "$pkg" "$cpkg"; do
    ld="$ld -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  go mod download k8s.io/kubernetes
  log "building ${kube_missing[*]##*/} (slow on first run)"
  go build -trimpath -ldflags "$ld" -o "$BIN/" "${kube_missing[@]}"
fi

# --- etcd: its server module has its own replace lines, so wrap its main -------------
if [[ ! -x "$BIN/etcd" ]]; then
  log "building etcd $ETCD_VERSION"
  cd "$WORK/etcd"
  { gomod_header etcdbuild; echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"; } > go.mod
  cat > main.go <<'GO'
// Command etcd wraps etcd's own entry point so it builds outside etcd's repository.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go mod tidy
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" .
fi

# --- helm ------------------------------------------------------------------------------
if [[ ! -x "$BIN/helm" ]]; then
  log "building helm $HELM_VERSION"
  cd "$WORK/helm"
  { gomod_header helmbuild; echo "require helm.sh/helm/v3 $HELM_VERSION"; } > go.mod
  go mod download helm.sh/helm/v3
  go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" -o "$BIN/helm" helm.sh/helm/v3/cmd/helm
fi

echo "$BIN"
