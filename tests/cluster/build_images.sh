#!/usr/bin/env bash
# Build every image the real node runs, with nothing pulled from outside, and push them to a registry:
#   pause    the sandbox image, kubelet's pause.c from the k8s.io/kubernetes module, static
#   coredns  CoreDNS built from its Go module (the cluster DNS)
#   python   Debian bookworm + Debian's Python 3.11 (mmdebstrap), a venv at /opt/python on PATH:
#            the stand-in for python:3.11-slim-bookworm
#   operator operator/Dockerfile, unchanged, with --build-arg PYTHON_IMAGE=<python>
#   trainer  trainer-image/Dockerfile, unchanged, with --build-arg PYTHON_IMAGE=<python>
# Usage: build_images.sh REGISTRY (host:port of a plain-HTTP registry, e.g. the real node's: realnode.py
# starts Debian's docker-registry with its storage in the cache and passes its address).
# Each image is tagged with a hash of its inputs; one the registry already holds is neither rebuilt nor
# pushed again, one still in buildah's storage is pushed without a rebuild, so only what changed rebuilds.
# The operator and trainer are also pushed under the release tag (the chart's default, pyproject's version),
# as the README's `docker push` does. Writes $CACHE/images/current.env (REGISTRY=host:port
# and NAME_IMAGE=ref lines) and prints its path.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${LORA_OPERATOR_CACHE:-$HOME/.cache/lora-operator}"
IMAGES="$CACHE/images"
BUILDAH=(buildah --root "$CACHE/buildah/storage" --runroot "$CACHE/buildah/run" --storage-driver overlay)
DEBIAN_SUITE=bookworm
COREDNS_VERSION="${COREDNS_VERSION:-v1.12.1}"
PAUSE_VERSION=3.10
PYTHON_BASE_REVISION=1
log() { echo "[build_images] $*" >&2; }
REGISTRY="${1:?usage: build_images.sh REGISTRY (host:port of a plain-HTTP registry)}"
mkdir -p "$IMAGES"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

# hash_of FILES/DIRS...: a short digest of paths and contents (sorted, __pycache__ ignored).
hash_of() {
  (cd "$ROOT" && find "$@" -type f -not -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum) | sha256sum | cut -c1-12
}

# manifest_url REF [TAG]: the registry's URL of REF's manifest (or of TAG in REF's repository).
manifest_url() {
  local path="${1#"$REGISTRY"/}"
  echo "http://$REGISTRY/v2/${path%:*}/manifests/${2:-${path##*:}}"
}
ACCEPT=(-H 'Accept: application/vnd.oci.image.manifest.v1+json'
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json')

# in_registry REF: the registry holds REF (repository:tag) already.
in_registry() { curl -sf -o /dev/null "${ACCEPT[@]}" "$(manifest_url "$1")"; }

# retag REF TAG: REF's manifest also under TAG, as the registry's API does it (the blobs are there).
retag() {
  local manifest type
  manifest="$(mktemp)"
  type="$(curl -sf -o "$manifest" -w '%{content_type}' "${ACCEPT[@]}" "$(manifest_url "$1")")"
  curl -sf -o /dev/null -X PUT -H "Content-Type: $type" --data-binary "@$manifest" "$(manifest_url "$1" "$2")"
  rm -f "$manifest"
}

# push LOCAL REF: copy a built image from buildah's storage to the registry (gzip layers, as any registry
# holds them; blobs the registry has are not sent again).
push() {
  "${BUILDAH[@]}" push -q --tls-verify=false "$1" "docker://$2" >/dev/null
}

# from_rootfs REF TAR CMD...: an image whose only layer is a root filesystem tarball.
from_rootfs() {
  local ref="$1" tar="$2" ctr mnt; shift 2
  ctr="$("${BUILDAH[@]}" from scratch)"
  mnt="$("${BUILDAH[@]}" mount "$ctr")"
  tar -C "$mnt" -xf "$tar"
  "${BUILDAH[@]}" umount "$ctr" >/dev/null
  "${BUILDAH[@]}" config "$@" "$ctr"
  "${BUILDAH[@]}" commit -q --rm "$ctr" "$ref" >/dev/null
}

# want NAME TAG: whether NAME must be built. Sets LOCAL[NAME] (the name in buildah's storage, the same
# whichever port the registry has today) and REF[NAME] (the name in the registry); pushes an image that
# is built but not yet in the registry.
declare -A REF LOCAL
want() {
  LOCAL[$1]="localhost/lora-$1:$2"; REF[$1]="$REGISTRY/lora-$1:$2"
  in_registry "${REF[$1]}" && return 1
  if "${BUILDAH[@]}" inspect "${LOCAL[$1]}" >/dev/null 2>&1; then push "${LOCAL[$1]}" "${REF[$1]}"; return 1; fi
  return 0
}

# --- pause: the sandbox every pod starts with --------------------------------------------
kube_version="$(grep -E '^KUBE_VERSION=' "$ROOT/tests/cluster/build_control_plane.sh" | sed -E 's/.*:-(v[^}]+)}.*/\1/')"
if want pause "$PAUSE_VERSION-$kube_version"; then
  log "building the pause image"
  src="$(cd /tmp && GOFLAGS= go mod download -json "k8s.io/kubernetes@$kube_version" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')/build/pause/linux/pause.c"
  tmp="$(mktemp -d)"
  mkdir -p "$tmp/root"
  gcc -Os -static -DVERSION="v$PAUSE_VERSION-lora" -o "$tmp/root/pause" "$src"
  strip "$tmp/root/pause"
  tar -C "$tmp/root" -cf "$tmp/rootfs.tar" pause
  from_rootfs "${LOCAL[pause]}" "$tmp/rootfs.tar" --entrypoint '["/pause"]' --user 65535:65535
  push "${LOCAL[pause]}" "${REF[pause]}"
  rm -rf "$tmp"
fi

# --- CoreDNS ---------------------------------------------------------------------------
if want coredns "$COREDNS_VERSION"; then
  log "building CoreDNS $COREDNS_VERSION"
  tmp="$(mktemp -d)"
  mkdir -p "$tmp/root"
  GOBIN="$CACHE/coredns-$COREDNS_VERSION" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  cp "$CACHE/coredns-$COREDNS_VERSION/coredns" "$tmp/root/coredns"
  tar -C "$tmp/root" -cf "$tmp/rootfs.tar" coredns
  from_rootfs "${LOCAL[coredns]}" "$tmp/rootfs.tar" --entrypoint '["/coredns"]'
  push "${LOCAL[coredns]}" "${REF[coredns]}"
  rm -rf "$tmp"
fi

# --- Debian's Python: the base both Dockerfiles build on ---------------------------------
# Bump PYTHON_BASE_REVISION to take newer Debian packages (security updates) into every image.
if want python "3.11-$DEBIAN_SUITE-$PYTHON_BASE_REVISION"; then
  log "building the Python base image (mmdebstrap $DEBIAN_SUITE)"
  tmp="$(mktemp -d)"
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    --customize-hook='chroot "$1" python3 -m venv /opt/python' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
    "$DEBIAN_SUITE" "$tmp/rootfs.tar" "deb http://deb.debian.org/debian $DEBIAN_SUITE main" \
    "deb http://deb.debian.org/debian-security $DEBIAN_SUITE-security main"
  from_rootfs "${LOCAL[python]}" "$tmp/rootfs.tar" \
    --env PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd '["python3"]'
  push "${LOCAL[python]}" "${REF[python]}"
  rm -rf "$tmp"
fi
if ! "${BUILDAH[@]}" inspect "${LOCAL[python]}" >/dev/null 2>&1; then  # the base for the builds below
  "${BUILDAH[@]}" pull -q --tls-verify=false "docker://${REF[python]}" >/dev/null
  "${BUILDAH[@]}" tag "${REF[python]}" "${LOCAL[python]}"
fi

# --- the project's images, from its Dockerfiles ------------------------------------------
# pip inside the build trusts the same CAs as pip here (a registry mirror may use its own CA).
pipconf="$IMAGES/pip.conf"
printf '[global]\ncert = /etc/ssl/certs/host-ca-certificates.crt\n' > "$pipconf"
ca="$(python3 -c 'import os; print(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")')"
inputs=(pyproject.toml README.md constraints.txt contract/lora_contract operator/lora_operator trainer-image/lora_trainer)
version="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")"
for name in operator trainer; do
  dockerfile="operator/Dockerfile"; [[ $name == trainer ]] && dockerfile="trainer-image/Dockerfile"
  key="$( { hash_of "$dockerfile" "${inputs[@]}"; echo "${LOCAL[python]}"; } | sha256sum | cut -c1-12)"
  if want "$name" "$version-$key"; then
    log "building ${LOCAL[$name]} from $dockerfile"
    "${BUILDAH[@]}" bud -q --layers --pull=never --isolation chroot \
      --build-arg "PYTHON_IMAGE=${LOCAL[python]}" \
      -v "$pipconf:/etc/pip.conf:ro" -v "$ca:/etc/ssl/certs/host-ca-certificates.crt:ro" \
      -f "$ROOT/$dockerfile" -t "${LOCAL[$name]}" "$ROOT" >&2
    push "${LOCAL[$name]}" "${REF[$name]}"
  fi
  retag "${REF[$name]}" "$version"
done

# Older builds of the same images in buildah's storage: only the current ones are kept (the registry keeps
# every pushed tag; their layers are mostly shared).
"${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}}' | while read -r image; do
  name="${image#localhost/lora-}"; name="${name%%:*}"
  if [[ -n "${LOCAL[$name]:-}" && "$image" != "${LOCAL[$name]}" ]]; then
    "${BUILDAH[@]}" rmi "$image" >/dev/null 2>&1 || true
  fi
done
out="$IMAGES/current.env"
{
  echo "REGISTRY=$REGISTRY"
  for name in "${!REF[@]}"; do echo "${name^^}_IMAGE=${REF[$name]}"; done | sort
} > "$out"
echo "$out"
