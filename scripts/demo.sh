#!/usr/bin/env bash
# The demo: the README's "On a real cluster" section, verbatim, on this machine. A local control
# plane with a real node (kubelet + containerd + runc, tests/cluster/realnode.py; needs root) and
# its registry (Debian's docker-registry on 127.0.0.1): the images are built here from
# operator/Dockerfile and trainer-image/Dockerfile and pushed there as $REGISTRY/lora-operator:0.1.0
# and $REGISTRY/lora-trainer:0.1.0 (tests/cluster/build_images.sh, buildah), and the node pulls
# them. Then `helm install`, `kubectl apply -f examples/quickstart.yaml` (a Minion and a run for it),
# the watch until the run ends, the report, the adapter's URI, and `kubectl get minions`.
# Keep the cluster afterwards with LORA_DEMO_KEEP=1 (Ctrl-C stops it and restores the host).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
BIN="$(bash tests/cluster/build_control_plane.sh)"
export PATH="$BIN:$PATH"
STATE="$(mktemp -d -t lora-demo-XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "demo files (logs, artifacts): $STATE"
}
trap cleanup EXIT

echo "==> building and pushing the images, starting the control plane with a real node in $STATE/cluster"
python -m tests.cluster.realnode up --state-dir "$STATE/cluster" >"$STATE/cluster.out" 2>"$STATE/cluster.log" &
pids+=($!)
for _ in $(seq 1 3600); do
  grep -q "real node up" "$STATE/cluster.log" 2>/dev/null && break
  if ! kill -0 "${pids[0]}" 2>/dev/null; then tail -40 "$STATE/cluster.log"; exit 1; fi
  sleep 1
done
export KUBECONFIG="$STATE/cluster/control-plane/kubeconfig"
kubectl get nodes -o wide

echo "==> the README's \"On a real cluster\" section (the images are in the node's registry already)"
REGISTRY="$(sed -n 's/^# REGISTRY=//p' "$STATE/cluster.out")"
helm install lora-operator charts/lora-operator -n lora-system --create-namespace --wait \
  --set image.repository=$REGISTRY/lora-operator --set trainer.image.repository=$REGISTRY/lora-trainer
echo "operator image pulled from the registry: $(kubectl get pods -n lora-system \
  -o jsonpath='{.items[0].status.containerStatuses[0].imageID}')"
kubectl apply -f examples/quickstart.yaml
kubectl get loratrainingjobs -w &
pids+=($!)
for _ in $(seq 1 1800); do
  phase="$(kubectl get ltj quickstart -o jsonpath='{.status.phase}')"
  [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
  sleep 2
done
sleep 1
echo
kubectl describe ltj quickstart
python -m lora_operator.report quickstart
echo "==> where the adapter is (kubectl get -o wide: its URI; docs/serving.md serves it)"
kubectl get ltj quickstart -o wide
echo "==> the minion the quickstart trained (its XP is credited within seconds of the run's end)"
for _ in $(seq 1 30); do
  [[ -n "$(kubectl get ltj quickstart -o jsonpath='{.status.credited.minion}')" ]] && break
  sleep 1
done
kubectl get minions
if [[ "${LORA_DEMO_KEEP:-0}" == 1 ]]; then
  echo "cluster kept: export KUBECONFIG=$KUBECONFIG PATH=$BIN:\$PATH ; Ctrl-C to stop"
  wait "${pids[0]}"
fi
[[ "$phase" == Succeeded ]]
