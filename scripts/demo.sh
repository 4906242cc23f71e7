#!/usr/bin/env bash
# The demo: a local Kubernetes control plane with a test node (pods run as local processes),
# the CRD, the operator, and examples/quickstart.yaml (SmolLM2-135M-Instruct on CPU). Watches
# `kubectl get loratrainingjobs -w` until the run ends, prints the report, and cleans up.
# Keep the cluster afterwards with LORA_DEMO_KEEP=1 (Ctrl-C stops it).
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

echo "==> starting the control plane and the test node in $STATE/cluster"
python -m tests.cluster.controlplane up --state-dir "$STATE/cluster" >"$STATE/cluster.out" 2>"$STATE/cluster.log" &
pids+=($!)
for _ in $(seq 1 180); do
  grep -q "cluster up" "$STATE/cluster.log" 2>/dev/null && break
  if ! kill -0 "${pids[0]}" 2>/dev/null; then cat "$STATE/cluster.log"; exit 1; fi
  sleep 1
done
export KUBECONFIG="$STATE/cluster/kubeconfig"
kubectl get nodes

echo "==> installing the CRD and starting the operator"
kubectl apply -f crds/
# Right after creation the CRD may have no conditions yet, which `kubectl wait` treats as an error.
for _ in $(seq 1 30); do
  kubectl wait --for=condition=Established --timeout=10s crd/loratrainingjobs.lora.airepublic.io 2>/dev/null && break
  sleep 1
done
LORA_SYNC_INTERVAL_SECONDS=5 python -m lora_operator >"$STATE/operator.log" 2>&1 &
pids+=($!)

echo "==> kubectl apply -f examples/quickstart.yaml"
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
echo "==> report"
python -m lora_operator.report quickstart
kubectl get events --field-selector involvedObject.name=quickstart --sort-by=.lastTimestamp
if [[ "${LORA_DEMO_KEEP:-0}" == 1 ]]; then
  echo "cluster kept: export KUBECONFIG=$KUBECONFIG PATH=$BIN:\$PATH ; Ctrl-C to stop"
  wait "${pids[0]}"
fi
[[ "$phase" == Succeeded ]]
