#!/usr/bin/env bash
# Build every image the real node runs, with nothing pulled from a registry:
#   pause    the sandbox image, kubelet's pause.c from the k8s.io/kubernetes module, static
#   coredns  CoreDNS built from its Go module (the cluster DNS)
#   python   Debian bookworm + Debian's Python 3.11 (mmdebstrap), a venv at /opt/python on PATH:
#            the stand-in for python:3.11-slim-bookworm
#   operator operator/Dockerfile, unchanged, with --build-arg PYTHON_IMAGE=<python>
#   trainer  trainer-image/Dockerfile, unchanged, with --build-arg PYTHON_IMAGE=<python>
# Each image is tagged with a hash of its inputs and saved as a docker-archive under the cache;
# an archive that exists is not rebuilt, so only what changed rebuilds. Writes
# $CACHE/images/current.env (NAME_IMAGE=ref and NAME_ARCHIVE=path lines) and prints its path.
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
mkdir -p "$IMAGES"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

# hash_of FILES/DIRS...: a short digest of paths and contents (sorted, __pycache__ ignored).
hash_of() {
  (cd "$ROOT" && find "$@" -type f -not -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum) | sha256sum | cut -c1-12
}

# save REF ARCHIVE: write a built image as a docker-archive (uncompressed: it is imported locally).
save() {
  "${BUILDAH[@]}" push -q --disable-compression "$1" "docker-archive:$2.partial:$1" >/dev/null
  mv "$2.partial" "$2"
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

declare -A REF ARCHIVE
want() { REF[$1]="$2"; ARCHIVE[$1]="$IMAGES/$1-${2##*:}.tar"; [[ ! -f "${ARCHIVE[$1]}" ]]; }

# --- pause: the sandbox every pod starts with --------------------------------------------
kube_version="$(grep -E '^KUBE_VERSION=' "$ROOT/tests/cluster/build_control_plane.sh" | sed -E 's/.*:-(v[^}]+)}.*/\1/')"
if want pause "localhost/lora-pause:$PAUSE_VERSION-$kube_version"; then
  log "building the pause image"
  src="$(cd /tmp && GOFLAGS= go mod download -json "k8s.io/kubernetes@$kube_version" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')/build/pause/linux/pause.c"
  tmp="$(mktemp -d)"
  mkdir -p "$tmp/root"
  gcc -Os -static -DVERSION="v$PAUSE_VERSION-lora" -o "$tmp/root/pause" "$src"
  strip "$tmp/root/pause"
  tar -C "$tmp/root" -cf "$tmp/rootfs.tar" pause
  from_rootfs "${REF[pause]}" "$tmp/rootfs.tar" --entrypoint '["/pause"]' --user 65535:65535
  save "${REF[pause]}" "${ARCHIVE[pause]}"
  rm -rf "$tmp"
fi

# --- CoreDNS ---------------------------------------------------------------------------
if want coredns "localhost/lora-coredns:$COREDNS_VERSION"; then
  log "building CoreDNS $COREDNS_VERSION"
  tmp="$(mktemp -d)"
  mkdir -p "$tmp/root"
  GOBIN="$CACHE/coredns-$COREDNS_VERSION" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  cp "$CACHE/coredns-$COREDNS_VERSION/coredns" "$tmp/root/coredns"
  tar -C "$tmp/root" -cf "$tmp/rootfs.tar" coredns
  from_rootfs "${REF[coredns]}" "$tmp/rootfs.tar" --entrypoint '["/coredns"]'
  save "${REF[coredns]}" "${ARCHIVE[coredns]}"
  rm -rf "$tmp"
fi

# --- Debian's Python: the base both Dockerfiles build on ---------------------------------
# Bump PYTHON_BASE_REVISION to take newer Debian packages (security updates) into every image.
if want python "localhost/lora-python:3.11-$DEBIAN_SUITE-$PYTHON_BASE_REVISION"; then
  log "building the Python base image (mmdebstrap $DEBIAN_SUITE)"
  tmp="$(mktemp -d)"
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    --customize-hook='chroot "$1" python3 -m venv /opt/python' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
    "$DEBIAN_SUITE" "$tmp/rootfs.tar" "deb http://deb.debian.org/debian $DEBIAN_SUITE main" \
    "deb http://deb.debian.org/debian-security $DEBIAN_SUITE-security main"
  from_rootfs "${REF[python]}" "$tmp/rootfs.tar" \
    --env PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd '["python3"]'
  save "${REF[python]}" "${ARCHIVE[python]}"
  rm -rf "$tmp"
fi
"${BUILDAH[@]}" inspect "${REF[python]}" >/dev/null 2>&1 || "${BUILDAH[@]}" pull -q "docker-archive:${ARCHIVE[python]}" >/dev/null

# --- the project's images, from its Dockerfiles ------------------------------------------
# pip inside the build trusts the same CAs as pip here (a registry mirror may use its own CA).
pipconf="$IMAGES/pip.conf"
printf '[global]\ncert = /etc/ssl/certs/host-ca-certificates.crt\n' > "$pipconf"
ca="$(python3 -c 'import os; print(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")')"
inputs=(pyproject.toml README.md constraints.txt contract/lora_contract operator/lora_operator trainer-image/lora_trainer)
version="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")"
for name in operator trainer; do
  dockerfile="operator/Dockerfile"; [[ $name == trainer ]] && dockerfile="trainer-image/Dockerfile"
  key="$( { hash_of "$dockerfile" "${inputs[@]}"; echo "${REF[python]}"; } | sha256sum | cut -c1-12)"
  if want "$name" "localhost/lora-$name:$version-$key"; then
    log "building ${REF[$name]} from $dockerfile"
    "${BUILDAH[@]}" bud -q --layers --pull=never --isolation chroot \
      --build-arg "PYTHON_IMAGE=${REF[python]}" \
      -v "$pipconf:/etc/pip.conf:ro" -v "$ca:/etc/ssl/certs/host-ca-certificates.crt:ro" \
      -f "$ROOT/$dockerfile" -t "${REF[$name]}" "$ROOT" >&2
    save "${REF[$name]}" "${ARCHIVE[$name]}"
  fi
done

# Old archives of the same images: keep only the current ones.
for name in "${!REF[@]}"; do
  find "$IMAGES" -maxdepth 1 -name "$name-*.tar" ! -path "${ARCHIVE[$name]}" -delete
done
out="$IMAGES/current.env"
for name in "${!REF[@]}"; do
  printf '%s_IMAGE=%s\n%s_ARCHIVE=%s\n' "${name^^}" "${REF[$name]}" "${name^^}" "${ARCHIVE[$name]}"
done | sort > "$out"
echo "$out"
