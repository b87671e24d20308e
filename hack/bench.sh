#!/usr/bin/env bash
# `make bench`: how fast the operator converges N ExternalAudiences, and how much memory it uses.
#   N=1000 RPS=200 CONCURRENCY=32 make bench
# Runs the release build against the local control plane and the emulator in zero-latency mode
# (so AEP latency does not hide the operator's own cost), and prints one summary line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
n=${N:-1000}
rps=${RPS:-200}
concurrency=${CONCURRENCY:-32}
work=${BENCH_DIR:-/tmp/audience-operator-bench}

cargo build --locked --workspace --release --bins -q
bin="$root/target/release"

cleanup() {
  for f in controller emulator; do [ -f "$work/$f.pid" ] && kill "$(cat "$work/$f.pid")" 2>/dev/null || true; done
  sleep 1
  for f in controller emulator; do [ -f "$work/$f.pid" ] && kill -9 "$(cat "$work/$f.pid")" 2>/dev/null || true; done
  "$bin/envtest" stop --dir "$work/cluster" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$work"; mkdir -p "$work"

cluster_env=$("$bin/envtest" start --dir "$work/cluster" --no-controller-manager 2>/dev/null)
eval "$cluster_env"
export KUBECONFIG

"$bin/aep-emulator" --listen 127.0.0.1:0 --zero-latency --max-runs-per-sandbox-per-day 1000000 \
  >"$work/emulator.out" 2>/dev/null &
echo $! >"$work/emulator.pid"
for _ in $(seq 1 100); do grep -q '^listening on ' "$work/emulator.out" && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/emulator.out")

kubectl apply --server-side -f crds/externalaudience.yaml >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/externalaudiences.aep.audience-operator.dev >/dev/null
kubectl apply --server-side -f deploy/rbac.yaml >/dev/null
kubectl create namespace bench >/dev/null
kubectl -n bench create secret generic aep-credentials \
  --from-literal=clientId=local-client --from-literal=clientSecret=local-secret \
  --from-literal=orgId=LOCAL0RG@AdobeOrg >/dev/null

python3 - "$n" >"$work/objects.yaml" <<'PY'
import sys
n = int(sys.argv[1])
src = open("deploy/samples/loyalty-members.yaml").read()
docs = []
for i in range(n):
    docs.append(src.replace("name: loyalty-members", f"name: bench-{i}")
                   .replace("name: Loyalty members", f"name: Bench audience {i}")
                   .replace("namespace: marketing", "namespace: bench"))
print("\n---\n".join(docs))
PY
kubectl apply --server-side -f "$work/objects.yaml" >/dev/null

start=$(date +%s.%N)
RUST_LOG=warn "$bin/controller" run --kubeconfig "$OPERATOR_KUBECONFIG" --metrics-addr 127.0.0.1:0 \
  --aep-platform-url "http://$addr" --aep-ims-url "http://$addr" \
  --concurrency "$concurrency" --aep-requests-per-second "$rps" \
  --operation-poll-interval 200ms --run-poll-interval 200ms >"$work/controller.log" 2>&1 &
echo $! >"$work/controller.pid"
pid=$(cat "$work/controller.pid")

deadline=$(( $(date +%s) + ${TIMEOUT:-900} ))
ready=0
while :; do
  ready=$(kubectl -n bench get ea -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$' || true)
  [ "$ready" -ge "$n" ] && break
  [ "$(date +%s)" -gt "$deadline" ] && { echo "bench: only $ready/$n Ready before the timeout" >&2; exit 1; }
  sleep 1
done
end=$(date +%s.%N)
rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
stats=$(curl -s "http://$addr/_emulator/stats")
python3 - "$n" "$start" "$end" "$rss_kb" "$rps" "$concurrency" "$stats" <<'PY'
import json, sys
n, start, end, rss_kb, rps, conc, stats = sys.argv[1:8]
n = int(n); secs = float(end) - float(start); s = json.loads(stats)
aep = sum(v for k, m in s["requests"].items() if "/data/core" in k for v in m.values())
print(f"bench: {n} ExternalAudiences Ready in {secs:.1f}s ({n/secs:.1f}/s); operator peak RSS {int(rss_kb)/1024:.1f} MiB; "
      f"{aep} AEP requests ({aep/n:.1f}/object), busiest second {s['max_aep_requests_per_second']} (limit {rps}); "
      f"creates {s['creates']}, runs {s['runs_started']}; concurrency {conc}")
PY
