#!/usr/bin/env bash
# `make bench`: the operator side by side with the kube-apiserver floor (see docs/performance.md).
#   make bench                                   # N=1000
#   BENCH_N_LIST="100 1000" make bench           # several sizes, one after another
#   N=1000 RPS=1000 CONCURRENCY=32 STEADY_SECS=180 STEADY_RESYNC_SECS=60 REALISTIC_N=1000 DEFAULT_RPS=1 PEER_K=5 make bench
#   RESTART_N=1000 RESTART_WINDOW_SECS=60 make bench   # also: a SIGKILL with N Ready, requests per window
#   ACTIVATIONS_N=1000 ACTIVATION_FLOWS=10 make bench   # also: N AudienceActivations over 10 dataflows
#   CONTROLLER=/path/to/controller make bench          # measure another build (default: target/dist)
# Starts the local control plane and the emulator (zero latency), builds the release binaries and
# runs crates/bench: the limit (create + the operator's writes with a plain concurrent client),
# the operator as its own process, the steady state window, optionally realistic AEP latency.
# Prints one table, writes bench/results/<UTC timestamp>.json, .md and .svg (and
# bench/ready-over-time.svg), and replaces the table between the bench markers of
# docs/performance.md (UPDATE_DOC=0 leaves it alone; UPDATE_README=0, its former name, still works).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
n_list=${BENCH_N_LIST:-${N:-1000}}
rps=${RPS:-1000}
concurrency=${CONCURRENCY:-32}
steady=${STEADY_SECS:-180}
realistic=${REALISTIC_N:-0}
work=${BENCH_DIR:-/tmp/audience-operator-bench}
nice=(nice -n "${NICE:-19}")

# The tools this script runs (release), and the controller as it ships (Cargo.toml, profile dist):
# the release controller is not built, the bench never runs it.
"${nice[@]}" cargo build --locked --release -p envtest -p aep-emulator -p bench --bins -q
"${nice[@]}" cargo build --locked --profile dist -p audience-operator --bin controller -q
bin="$root/target/release"

cleanup() {
  [ -f "$work/emulator.pid" ] && kill "$(cat "$work/emulator.pid")" 2>/dev/null || true
  "$bin/envtest" stop --dir "$work/cluster" >/dev/null 2>&1 || true
  rm -rf "$work/cluster"
}
trap cleanup EXIT
rm -rf "$work"; mkdir -p "$work"

cluster_env=$("${nice[@]}" "$bin/envtest" start --dir "$work/cluster" --no-controller-manager 2>/dev/null)
eval "$cluster_env"
export KUBECONFIG OPERATOR_KUBECONFIG

"${nice[@]}" "$bin/aep-emulator" --listen 127.0.0.1:0 --zero-latency --max-runs-per-sandbox-per-day 1000000 \
  >"$work/emulator.out" 2>/dev/null &
echo $! >"$work/emulator.pid"
for _ in $(seq 1 100); do grep -q '^listening on ' "$work/emulator.out" && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/emulator.out")

kubectl apply --server-side -k crds >/dev/null
hack/wait-crds.sh
kubectl apply --server-side -f deploy/base/rbac.yaml >/dev/null

# The peer: a sequential aepp-style script at realistic latency (K audiences, extrapolated to N).
peer_k=${PEER_K:-5}
peer=()
if [ "$peer_k" -gt 0 ]; then
  # Extrapolated to the realistic run's N (the operator's run at the same latency), else the last N.
  last_n=${n_list##* }
  peer_n=$last_n
  [ "$realistic" -gt 0 ] && peer_n=$realistic
  "${nice[@]}" python3 hack/bench/peer.py --url "http://$addr" --k "$peer_k" --n "$peer_n" \
    --operation-delay-ms "${REALISTIC_OPERATION_DELAY_MS:-2000}" --run-delay-ms "${REALISTIC_RUN_DELAY_MS:-10000}" \
    --json "$work/peer.json" >&2
  peer=(--peer-json "$work/peer.json")
fi

# The command as typed, for the table in docs/performance.md.
cmd="make bench"
for v in N BENCH_N_LIST RPS CONCURRENCY STEADY_SECS STEADY_RESYNC_SECS REALISTIC_N RESTART_N RESTART_WINDOW_SECS ACTIVATIONS_N ACTIVATION_FLOWS DEFAULT_RPS PEER_K TIMEOUT; do
  if [ -n "${!v:-}" ]; then
    case "${!v}" in *" "*) cmd="$v=\"${!v}\" $cmd" ;; *) cmd="$v=${!v} $cmd" ;; esac
  fi
done
export BENCH_COMMAND="$cmd"
doc=()
[ "${UPDATE_DOC:-${UPDATE_README:-1}}" = 1 ] && doc=(--doc docs/performance.md)

n_args=()
for n in $n_list; do n_args+=(--n "$n"); done
extra=()
[ "${DEFAULT_RPS:-0}" = 1 ] && extra+=(--default-rps)
[ "${SKIP_LIMIT:-0}" = 1 ] && extra+=(--skip-limit)
"${nice[@]}" "$bin/bench" --emulator-url "http://$addr" --controller "${CONTROLLER:-$root/target/dist/controller}" --nice \
  "${n_args[@]}" --concurrency "$concurrency" --rps "$rps" --steady-secs "$steady" \
  --realistic-n "$realistic" --timeout-secs "${TIMEOUT:-900}" --out-dir bench/results \
  --steady-resync-secs "${STEADY_RESYNC_SECS:-60}" \
  --restart-n "${RESTART_N:-0}" --restart-window-secs "${RESTART_WINDOW_SECS:-60}" \
  --activations-n "${ACTIVATIONS_N:-0}" --activation-flows "${ACTIVATION_FLOWS:-10}" \
  --realistic-operation-delay-ms "${REALISTIC_OPERATION_DELAY_MS:-2000}" \
  --realistic-run-delay-ms "${REALISTIC_RUN_DELAY_MS:-10000}" \
  --work-dir "$work" "${peer[@]}" "${extra[@]}" "${doc[@]}"
latest=$(ls -t bench/results/*Z.svg | head -1)
cp "$latest" bench/ready-over-time.svg
# The scaling chart of this run, when it measured more than one N.
if [ -f "${latest%.svg}-scaling.svg" ]; then cp "${latest%.svg}-scaling.svg" bench/scaling.svg; fi
