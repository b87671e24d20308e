#!/usr/bin/env bash
# `make demo`: the operator's main job end to end on the local defaults.
#   local control plane (etcd + kube-apiserver + kube-controller-manager)
#   + AEP emulator + operator (as its ServiceAccount, with deploy/ RBAC)
#   + the seed example with its credentials Secret -> Ready
#   + its activations to a file-based and a streaming destination dataflow -> Ready.
# KEEP=1 leaves everything running and prints what to export.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work=${DEMO_DIR:-/tmp/audience-operator-demo}
keep=${KEEP:-0}

log() { printf '\n==> %s\n' "$*"; }

log "Building the operator, the emulator and the control-plane launcher"
cargo build --locked --workspace --bins -q
bin="$root/target/debug"

cleanup() {
  [ "$keep" = 1 ] && return
  log "Stopping everything"
  [ -f "$work/controller.pid" ] && kill "$(cat "$work/controller.pid")" 2>/dev/null || true
  [ -f "$work/emulator.pid" ] && kill "$(cat "$work/emulator.pid")" 2>/dev/null || true
  for f in controller emulator; do
    pid=$(cat "$work/$f.pid" 2>/dev/null || true)
    for _ in $(seq 1 50); do [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && sleep 0.1 || break; done
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  done
  "$bin/envtest" stop --dir "$work/cluster" || true
  rm -rf "$work"
}
trap cleanup EXIT

# A previous KEEP=1 demo may still run.
if [ -d "$work" ]; then
  for f in controller emulator; do [ -f "$work/$f.pid" ] && kill "$(cat "$work/$f.pid")" 2>/dev/null || true; done
  "$bin/envtest" stop --dir "$work/cluster" >/dev/null 2>&1 || true
  rm -rf "$work"
fi
mkdir -p "$work"

log "Starting the local control plane"
cluster_env=$("$bin/envtest" start --dir "$work/cluster")
eval "$cluster_env"
export KUBECONFIG

log "Starting the AEP emulator"
"$bin/aep-emulator" --listen 127.0.0.1:0 --operation-delay-ms 1000 --run-delay-ms 3000 \
  >"$work/emulator.out" 2>"$work/emulator.log" &
echo $! >"$work/emulator.pid"
for _ in $(seq 1 100); do grep -q '^listening on ' "$work/emulator.out" && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/emulator.out")
[ -n "$addr" ] || { echo "emulator did not start; see $work/emulator.log" >&2; exit 1; }
echo "emulator at http://$addr"

log "Installing the CRD and the operator's RBAC"
kubectl apply --server-side -k crds
hack/wait-crds.sh
kubectl apply --server-side -f deploy/base/rbac.yaml

log "Starting the operator as system:serviceaccount:audience-operator:audience-operator"
"$bin/controller" run --kubeconfig "$OPERATOR_KUBECONFIG" --metrics-addr 127.0.0.1:0 \
  --aep-platform-url "http://$addr" --aep-ims-url "http://$addr" \
  --operation-poll-interval 1s --run-poll-interval 2s --activation-poll-interval 5s \
  >"$work/controller.log" 2>&1 &
echo $! >"$work/controller.pid"

log "Applying the seed example and its credentials Secret"
kubectl create namespace marketing
kubectl -n marketing create secret generic aep-credentials \
  --from-literal=clientId=local-client --from-literal=clientSecret=local-secret \
  --from-literal=orgId=LOCAL0RG@AdobeOrg
kubectl apply -f deploy/samples/loyalty-members.yaml

log "Waiting for Ready"
if ! kubectl -n marketing wait --for=condition=Ready --timeout=120s externalaudience/loyalty-members; then
  echo "not Ready in time; operator log tail:" >&2
  tail -30 "$work/controller.log" >&2
  exit 1
fi

log "Activating it: two destination dataflows (made by the destination administrator; here in the emulator)"
curl -fsS -X POST "http://$addr/_emulator/flows" -H 'content-type: application/json' \
  -d '{"id":"b8f0c5a2-6d1e-4f3b-9c7a-2e5d8f1a0b01","name":"S3 nightly files","kind":"batch"}'
echo
curl -fsS -X POST "http://$addr/_emulator/flows" -H 'content-type: application/json' \
  -d '{"id":"d3a7e9c1-4b2f-4a6d-8e5c-7f1b2a9c0d02","name":"Kinesis stream","kind":"streaming"}'
echo
kubectl apply -f deploy/samples/loyalty-members-to-s3.yaml -f deploy/samples/loyalty-members-to-kinesis.yaml
if ! kubectl -n marketing wait --for=condition=Ready --timeout=120s \
  audienceactivation/loyalty-members-to-s3 audienceactivation/loyalty-members-to-kinesis; then
  echo "activations not Ready in time; operator log tail:" >&2
  tail -30 "$work/controller.log" >&2
  exit 1
fi

log "kubectl get ea,aact -o wide"
kubectl -n marketing get ea -o wide
kubectl -n marketing get aact -o wide
log "Conditions"
kubectl -n marketing get ea loyalty-members \
  -o jsonpath='{range .status.conditions[*]}{.type}{"\t"}{.status}{"\t"}{.reason}{"\t"}{.message}{"\n"}{end}'
log "Status"
kubectl -n marketing get ea loyalty-members -o jsonpath='{.status}' | python3 -m json.tool
log "Events"
kubectl -n marketing get events.events.k8s.io --sort-by=.metadata.creationTimestamp \
  -o custom-columns=TYPE:.type,REASON:.reason,NOTE:.note

if [ "$keep" = 1 ]; then
  log "Left running (KEEP=1). To use it:"
  echo "export KUBECONFIG=$KUBECONFIG"
  echo "# emulator: http://$addr   operator log: $work/controller.log"
  echo "# stop with: kill \$(cat $work/controller.pid) \$(cat $work/emulator.pid); $bin/envtest stop --dir $work/cluster"
else
  log "Demo complete"
fi
