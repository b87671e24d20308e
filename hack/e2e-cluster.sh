#!/usr/bin/env bash
# `make e2e-cluster`: the operator's install from deploy/ (then the Helm chart) running as real
# Pods on a real single-node cluster (hack/node/cluster.sh: kubelet, containerd, runc, CNI,
# scheduler, controller-manager, apiserver, etcd), against the AEP emulator:
#
#   cluster up; the image loaded into the node's runtime; a smoke Pod reaches the apiserver
#   through the `kubernetes` Service IP
#   kubectl apply -k <deploy/ + image reference, pull policy Never, the emulator's endpoints>,
#     namespace enforcing Pod Security `restricted` -> 2 Pods Ready, exactly one Lease holder
#   credentials Secret + seed example -> Ready; AEP requests counted per Pod (its /metrics)
#   delete the leader Pod -> another Pod takes the Lease; a spec change converges; no AEP request
#     while no Pod holds the Lease, none from a follower
#   kubectl rollout restart, Lease holder and Pods sampled every 200 ms
#   uninstall as docs/install.md says (ExternalAudiences first, then kubectl delete -k): nothing left
#   the same with helm install / helm uninstall, watching a list of namespaces (marketing,sales:
#     a Role in each, nothing cluster-wide): the seed Ready in both
#
# The emulator listens on the node's bridge address with TLS. The operator trusts its CA through
# the CA bundle every Pod gets (hack/node/cluster.sh NODE_EXTRA_CA): neither install needs a
# volume or anything else that deploy/ or the chart does not have; only flags are added
# (--aep-platform-url, --aep-ims-url, --aep-ca-file, faster polls).
#
#   IMAGE=name:tag      the image in buildah's storage (default audience-operator:<crate version>)
#   KEEP_LOGS=dir       keep the daemons' and Pods' logs there
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
image=${IMAGE:-audience-operator:$version}
bah=(buildah --storage-driver vfs)
work=$(mktemp -d /tmp/audience-operator-e2e-cluster.XXXXXX)
chmod 0755 "$work"

now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { printf '%d.%01ds' $(($1 / 1000)) $((($1 % 1000) / 100)); }
t_all=$(now_ms)
t_step=$t_all
step_names=() step_times=()
close_step() {
  local t
  t=$(now_ms)
  if [ -n "${cur_step:-}" ]; then
    step_names+=("$cur_step")
    step_times+=($((t - t_step)))
    printf '    (%s)\n' "$(secs $((t - t_step)))"
  fi
  cur_step=""
  t_step=$t
}
step() { # closes the running step, opens the next
  close_step
  cur_step=$1
  printf '\n==> %s\n' "$1"
}
die() {
  echo "e2e-cluster: FAILED in step '${cur_step:-}': $*" >&2
  exit 1
}
summary() {
  local i
  echo
  echo "e2e-cluster: wall time per step"
  for i in "${!step_names[@]}"; do printf '  %-68s %8s\n' "${step_names[$i]}" "$(secs "${step_times[$i]}")"; done
  printf '  %-68s %8s\n' total "$(secs $(($(now_ms) - t_all)))"
}

command -v buildah >/dev/null || die "buildah not found (make image installs it)"
"${bah[@]}" inspect --type image "$image" >/dev/null 2>&1 || die "no image $image in buildah's storage: run make image"

step "Build the AEP emulator, Helm and the cluster's binaries"
cargo build --locked -q -p aep-emulator --bin aep-emulator
emulator_bin="$root/target/debug/aep-emulator"
helm=$(hack/helm/build.sh)
ENVTEST_BIN_DIR=${ENVTEST_BIN_DIR:-$(hack/envtest/build.sh)}
NODE_BIN_DIR=${NODE_BIN_DIR:-$(hack/node/build.sh)}
export ENVTEST_BIN_DIR NODE_BIN_DIR
export PATH="$NODE_BIN_DIR:$ENVTEST_BIN_DIR:$PATH"

# shellcheck source=node/cluster.sh
. hack/node/cluster.sh
set -euo pipefail

emulator_pid="" sampler_pid="" ok=0
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null
  if [ "$rc" != 0 ] || [ "$ok" != 1 ]; then
    for f in "$work"/pods/*.log; do
      [ -f "$f" ] && { echo "--- $(basename "$f") (tail)"; tail -n 15 "$f"; } >&2
    done
    [ -f "$work/emulator.log" ] && { echo "--- emulator log (tail)"; tail -n 10 "$work/emulator.log"; } >&2
    if [ -n "${KUBECONFIG:-}" ] && kubectl get --raw /readyz >/dev/null 2>&1; then
      {
        echo "--- Pods"
        kubectl get pods -A -o wide
        for p in $(kubectl -n audience-operator get pods -o name 2>/dev/null); do
          echo "--- $p (last lines; and of its previous container, if any)"
          kubectl -n audience-operator logs --tail=10 "$p"
          kubectl -n audience-operator logs --tail=10 --previous "$p" 2>/dev/null
        done
        echo "--- Events (last 15)"
        kubectl get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -n 15
      } >&2 2>&1
    fi
  fi
  if [ -n "${KEEP_LOGS:-}" ]; then
    mkdir -p "$KEEP_LOGS" && cp -r "$work"/*.log "$work"/*.tsv "$work/pods" "$KEEP_LOGS/" 2>/dev/null
    cp "$work/kustomize/kustomization.yaml" "$KEEP_LOGS/" 2>/dev/null
  fi
  [ "$ok" = 1 ] || close_step
  step "Cluster down (every process, mount, link, cgroup and iptables rule of the node)"
  cluster_down
  local down_rc=$?
  close_step
  rm -rf "$work"
  [ "$rc" = 0 ] && [ "$down_rc" != 0 ] && rc=1
  summary
  if [ "$rc" = 0 ]; then echo "e2e-cluster: PASS"; else echo "e2e-cluster: FAIL (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The emulator, started by cluster_up as soon as the bridge address exists; its CA joins the
# CA bundle of every Pod.
cluster_hook_network_up() {
  setsid "$emulator_bin" --listen "$NODE_IP:0" --tls --ca-out "$work/emulator-ca.pem" --zero-latency \
    </dev/null >"$work/emulator.out" 2>"$work/emulator.log" 9>&- &
  emulator_pid=$!
  cluster_adopt aep-emulator "$emulator_pid"
  for _ in $(seq 1 100); do grep -qs '^listening on ' "$work/emulator.out" && break; sleep 0.1; done
  emulator_addr=$(sed -n 's/^listening on //p' "$work/emulator.out")
  [ -n "$emulator_addr" ] || return 1
  export NODE_EXTRA_CA="$work/emulator-ca.pem"
}

step "Cluster up (etcd, apiserver, controller-manager, scheduler, containerd, kubelet) to Node Ready"
cluster_up || die "cluster_up failed"
emulator_url="https://$emulator_addr"
echo "node $NODE_NAME Ready; apiserver https://$NODE_API_IP:443; emulator $emulator_url"
kubectl get node -o wide

step "Load $image into the node's runtime"
# buildah names a local build localhost/NAME:TAG; the Pods ask for that name.
case "$image" in */*) pod_image=$image ;; *) pod_image=localhost/$image ;; esac
cluster_load_image "$image" "$pod_image" >/dev/null || die "image load failed"
echo "runtime image: $pod_image"

emu_stats() { curl -fsS --cacert "$work/emulator-ca.pem" "$emulator_url/_emulator/stats"; }
emu_received() { # total AEP requests the emulator received, and IMS token requests
  emu_stats | python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(s.get("received",{}).values()), s.get("token_requests",0))'
}
pod_ip() { kubectl -n "$1" get pod "$2" -o jsonpath='{.status.podIP}'; }
# AEP requests a Pod sent (its externalaudience_aep_requests counter, all operations and statuses).
pod_aep_requests() { # namespace pod
  local ip
  local ip m
  ip=$(pod_ip "$1" "$2")
  m=$(curl -fsS --max-time 5 "http://$ip:9090/metrics") || { echo "cannot read http://$ip:9090/metrics of $2" >&2; return 1; }
  awk '/^externalaudience_aep_requests_total[{ ]/ { n += $NF } END { printf "%d\n", n }' <<<"$m"
}
lease_holder() { kubectl -n "$1" get lease "$2" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true; }
ready_pods() { # namespace selector: names of Running+Ready Pods not being deleted
  kubectl -n "$1" get pods -l "$2" -o json | python3 -c '
import json, sys
for p in json.load(sys.stdin)["items"]:
    if p["metadata"].get("deletionTimestamp"): continue
    if p["status"].get("phase") != "Running": continue
    if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])):
        print(p["metadata"]["name"])'
}
wait_until() { # seconds description command...
  local secs=$1 what=$2 deadline
  shift 2
  deadline=$(($(date +%s) + secs))
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "$what: not within ${secs}s"
    sleep 0.2
  done
}

step "Smoke Pod: the image as a bare Pod, in-cluster config via the kubernetes Service IP"
kubectl create namespace node-smoke >/dev/null
kubectl label namespace node-smoke pod-security.kubernetes.io/enforce=restricted >/dev/null
kubectl -n node-smoke apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: smoke}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: controller
      image: $pod_image
      imagePullPolicy: Never
      args: ["run", "--metrics-addr=0.0.0.0:9090"]
      securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
EOF
smoke_running() { [ "$(kubectl -n node-smoke get pod smoke -o jsonpath='{.status.phase}')" != Pending ]; }
wait_until 120 "smoke Pod started" smoke_running
# Its ServiceAccount (default, no RBAC) gets 403 from the apiserver: proof that TLS (the CA in
# the projected volume) and the token worked through 10.89.0.1:443.
smoke_denied() { kubectl -n node-smoke logs smoke 2>/dev/null | grep -q 'system:serviceaccount:node-smoke:default'; }
wait_until 60 "smoke Pod's apiserver answer in its log" smoke_denied
echo "smoke Pod $(kubectl -n node-smoke get pod smoke -o jsonpath='{.status.phase} on {.spec.nodeName}, IP {.status.podIP}'); its log:"
kubectl -n node-smoke logs smoke | grep -m1 'system:serviceaccount:node-smoke:default' | cut -c1-400
kubectl delete namespace node-smoke --wait=false >/dev/null

# --- kustomize install ------------------------------------------------------------------------
k=$work/kustomize
mkdir -p "$k"
deploy_rel=$(realpath --relative-to="$k" "$root/deploy")
op_args=(--aep-platform-url="$emulator_url" --aep-ims-url="$emulator_url"
  --aep-ca-file=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt
  --operation-poll-interval=1s --run-poll-interval=2s --activation-poll-interval=5s)
{
  echo "# deploy/ with the node's image reference, pull policy Never, Pod Security restricted"
  echo "# enforced on the namespace, and the emulator's endpoints."
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources: [$deploy_rel]"
  echo "images:"
  echo "  - {name: audience-operator, newName: ${pod_image%:*}, newTag: ${pod_image##*:}}"
  echo "patches:"
  echo "  - target: {kind: Namespace, name: audience-operator}"
  echo "    patch: |"
  echo "      - {op: add, path: /metadata/labels, value: {pod-security.kubernetes.io/enforce: restricted, pod-security.kubernetes.io/enforce-version: latest}}"
  echo "  - target: {kind: Deployment, name: audience-operator}"
  echo "    patch: |"
  echo "      - {op: replace, path: /spec/template/spec/containers/0/imagePullPolicy, value: Never}"
  for a in "${op_args[@]}"; do
    echo "      - {op: add, path: /spec/template/spec/containers/0/args/-, value: \"$a\"}"
  done
} >"$k/kustomization.yaml"
ns=audience-operator sel=app.kubernetes.io/name=audience-operator lease=audience-operator

step "kubectl apply -k (deploy/ + image + emulator flags) to 2 Pods Ready, one Lease holder"
kubectl apply --server-side -k "$k" >/dev/null || die "kubectl apply -k failed"
[ "$(kubectl get ns $ns -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}')" = restricted ] ||
  die "namespace $ns does not enforce restricted"
kubectl -n $ns rollout status deploy/audience-operator --timeout=180s || die "rollout"
two_ready() { [ "$(ready_pods $ns $sel | wc -l)" = 2 ]; }
wait_until 60 "2 Pods Ready" two_ready
mapfile -t pods < <(ready_pods $ns $sel)
has_holder() { local h; h=$(lease_holder $ns $lease); [ -n "$h" ]; }
wait_until 60 "a Lease holder" has_holder
leader=$(lease_holder $ns $lease)
case " ${pods[*]} " in *" $leader "*) ;; *) die "Lease holder '$leader' is not one of the Pods ${pods[*]}" ;; esac
follower=${pods[0]}
[ "$follower" = "$leader" ] && follower=${pods[1]}
kubectl -n $ns get pods -o wide
echo "Lease $ns/$lease held by $leader; follower $follower"
kubectl -n $ns get pod "$leader" -o jsonpath='{.spec.containers[0].image} {.status.containerStatuses[0].imageID}{"\n"}'

step "Credentials Secret + seed example to Ready"
kubectl create namespace marketing >/dev/null
kubectl -n marketing create secret generic aep-credentials \
  --from-literal=clientId=local-client --from-literal=clientSecret=local-secret \
  --from-literal=orgId=LOCAL0RG@AdobeOrg >/dev/null
kubectl apply -f deploy/samples/loyalty-members.yaml >/dev/null
kubectl -n marketing wait --for=condition=Ready --timeout=180s externalaudience/loyalty-members ||
  die "seed not Ready"
kubectl -n marketing get externalaudience loyalty-members -o wide
read -r emu_aep emu_tokens < <(emu_received)
n_leader=$(pod_aep_requests $ns "$leader") || die "metrics"
n_follower=$(pod_aep_requests $ns "$follower") || die "metrics"
echo "AEP requests: leader $leader sent $n_leader (its metric), follower $follower sent $n_follower; the emulator received $emu_aep AEP requests and $emu_tokens token requests"
[ "$n_follower" = 0 ] || die "the follower sent $n_follower AEP requests"
[ "$n_leader" -gt 0 ] || die "the leader's metric counts no AEP request"

# The sampler, every ~200 ms: the Lease holder, the AEP requests the emulator has received, and
# the Pods (name:phase:ready[deletionTimestamp]); plus a copy of every Pod's container log from the
# node (the kubelet deletes it with the Pod).
start_sampler() { # samples-file
  mkdir -p "$work/pods"
  python3 - "$1" "$ns" "$lease" "$sel" "$emulator_url" "$work/emulator-ca.pem" "$NODE_DIR" "$work/pods" 9>&- <<'PY' &
# One process, kept-alive HTTPS connections: a sample every 200 ms (kubectl per sample is ~0.5 s
# on two cores).
import glob, http.client, json, os, shutil, ssl, sys, time
out, ns, lease, sel, emu, emu_ca, node_dir, pod_dir = sys.argv[1:9]
pki = os.path.join(node_dir, "pki")
api_ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
api_ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
emu_ctx = ssl.create_default_context(cafile=emu_ca)
api_host = os.environ["NODE_API_IP"]
emu_host, emu_port = emu.split("//", 1)[1].rsplit(":", 1)
conns = {}
def get(name, path):
    for attempt in range(2):
        try:
            c = conns.get(name)
            if c is None:
                c = (http.client.HTTPSConnection(api_host, 443, context=api_ctx, timeout=2) if name == "api"
                     else http.client.HTTPSConnection(emu_host, int(emu_port), context=emu_ctx, timeout=2))
                conns[name] = c
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            return r.status, json.loads(body) if body else None
        except Exception:
            conns.pop(name, None)
    return None, None
with open(out, "a", buffering=1) as f:
    while True:
        t0 = time.time()
        st, l = get("api", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{lease}")
        holder = ((l or {}).get("spec") or {}).get("holderIdentity") or "-" if st == 200 else "-"
        st, s = get("emu", "/_emulator/stats")
        received = str(sum((s or {}).get("received", {}).values())) if st == 200 else "-"
        st, pl = get("api", f"/api/v1/namespaces/{ns}/pods?labelSelector={sel}")
        pods = []
        for p in (pl or {}).get("items", []) if st == 200 else []:
            cs = (p.get("status", {}).get("containerStatuses") or [{}])[0]
            pods.append(f'{p["metadata"]["name"]}:{p["status"].get("phase")}:{str(cs.get("ready", False)).lower()}'
                        + (":deleting" if p["metadata"].get("deletionTimestamp") else ""))
        f.write(f"{int(t0 * 1000)}\t{holder}\t{received}\t{' '.join(pods)}\n")
        for src in glob.glob(os.path.join(node_dir, "pod-logs", f"{ns}_*", "controller", "*.log")):
            try:
                shutil.copyfile(src, os.path.join(pod_dir, src.split(os.sep)[-3] + ".log"))
            except OSError:
                pass
        time.sleep(max(0.0, 0.2 - (time.time() - t0)))
PY
  sampler_pid=$!
}
stop_sampler() {
  kill "$sampler_pid" 2>/dev/null
  wait "$sampler_pid" 2>/dev/null || true
  sampler_pid=""
}
# Reads a samples file: holder changes; every sample names at most one holder (a Lease has one
# field) and it is a Pod of that sample; while no Pod holds the Lease, the emulator's count of
# AEP requests does not move; leadership intervals from the Pods' own logs.
check_samples() { # samples-file
  python3 - "$1" "$work/pods" <<'PY'
import glob, os, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
rows = [(int(t), h, r, p.split()) for t, h, r, p in rows]
gaps = [b[0] - a[0] for a, b in zip(rows, rows[1:])]
print(f"{len(rows)} samples over {(rows[-1][0] - rows[0][0]) / 1000:.1f} s, interval median "
      f"{sorted(gaps)[len(gaps) // 2] if gaps else 0} ms, max {max(gaps) if gaps else 0} ms")
changes, prev = [], None
for t, h, r, pods in rows:
    if h != prev:
        changes.append((t, h))
        prev = h
print("Lease holder over time: " + " -> ".join(f"{h} (+{(t - rows[0][0]) / 1000:.1f}s)" for t, h in changes))
fail = False
names = lambda pods: {x.split(":")[0] for x in pods}
bad = [(t, h) for t, h, r, pods in rows if h != "-" and h not in names(pods)]
if bad:
    print(f"FAIL: the holder is not among the Pods in {len(bad)} samples, first: {bad[0]}")
    fail = True
# No holder: between two consecutive samples without a holder the emulator must receive nothing.
moved = [(a[0], a[2], b[2]) for a, b in zip(rows, rows[1:])
         if a[1] == "-" and b[1] == "-" and a[2] != "-" and b[2] != "-" and a[2] != b[2]]
no_holder = sum(b[0] - a[0] for a, b in zip(rows, rows[1:]) if a[1] == "-" and b[1] == "-")
print(f"time with no holder between samples: {no_holder} ms; AEP requests received meanwhile: "
      f"{sum(int(c) - int(b) for _, b, c in moved)}")
if moved:
    print(f"FAIL: AEP requests arrived while no Pod held the Lease: {moved[:5]}")
    fail = True
def key(ts):  # RFC 3339 with up to 9 fraction digits (trailing zeros trimmed) -> sortable
    day, _, rest = ts.partition("T")
    hms, _, frac = rest.rstrip("Z").partition(".")
    return f"{day}T{hms}.{frac.ljust(9, '0')}"
# From the Pods' own logs (copied every sample): when each acquired the Lease, and its last line
# before "Controller stopped" (the one line a leader writes after releasing the Lease). A leader
# must have written its last such line before the next leader acquired.
leaders = []
for f in sorted(glob.glob(os.path.join(sys.argv[2], "*.log"))):
    pod = os.path.basename(f).split("_")[1]
    acquired = last = work_end = None
    for line in open(f, errors="replace"):
        parts = line.split(" ", 3)
        if len(parts) < 4:
            continue
        last = key(parts[0])
        if '"Controller stopped"' not in parts[3]:
            work_end = last
        if "Acquired leadership" in parts[3] and acquired is None:
            acquired = last
    print(f"  {pod}: " + (f"acquired the Lease at {acquired}" if acquired else "never acquired the Lease")
          + f", log ends {last}")
    if acquired:
        leaders.append((acquired, work_end, pod))
leaders.sort()
for (a1, w1, p1), (a2, w2, p2) in zip(leaders, leaders[1:]):
    if a2 <= w1:
        print(f"FAIL: {p2} acquired the Lease at {a2}, before {p1}'s last line as leader at {w1}")
        fail = True
    else:
        print(f"  hand-over {p1} -> {p2}: {p1}'s last line {w1}, {p2} acquired {a2}")
sys.exit(1 if fail else 0)
PY
}

step "Delete the leader Pod: another Pod takes the Lease"
start_sampler "$work/failover.tsv"
sleep 1
t_del=$(now_ms)
kubectl -n $ns delete pod "$leader" --wait=false >/dev/null
new_holder() { local h; h=$(lease_holder $ns $lease); [ -n "$h" ] && [ "$h" != "$leader" ]; }
wait_until 90 "a new Lease holder" new_holder
new_leader=$(lease_holder $ns $lease)
t_take=$(($(now_ms) - t_del))
if [ "$new_leader" = "$follower" ]; then who="the follower"; else who="the ReplicaSet's replacement Pod"; fi
echo "$new_leader ($who) holds the Lease $(secs "$t_take") after the delete"
wait_until 60 "2 Pods Ready after the delete" two_ready
n_before=$(pod_aep_requests $ns "$new_leader") || die "metrics"
echo "$new_leader's AEP requests at takeover: $n_before"

step "Spec change converges under the new leader"
gen=$(kubectl -n marketing get ea loyalty-members -o jsonpath='{.metadata.generation}')
kubectl -n marketing patch ea loyalty-members --type merge -p '{"spec":{"description":"Members exported nightly from the CRM (after fail-over)"}}' >/dev/null
new_gen=$(kubectl -n marketing get ea loyalty-members -o jsonpath='{.metadata.generation}')
[ "$new_gen" -gt "$gen" ] || die "the patch did not bump the generation"
converged() {
  local s
  s=$(kubectl -n marketing get ea loyalty-members -o json | python3 -c '
import json, sys
o = json.load(sys.stdin); g = o["metadata"]["generation"]; st = o.get("status", {})
ready = [c for c in st.get("conditions", []) if c["type"] == "Ready"]
print("yes" if st.get("observedGeneration") == g and ready and ready[0]["status"] == "True"
      and ready[0].get("observedGeneration", g) == g else "no")')
  [ "$s" = yes ]
}
wait_until 120 "the spec change converges" converged
[ "$(kubectl -n marketing get ea loyalty-members -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ] ||
  die "not Ready after the change"
n_after=$(pod_aep_requests $ns "$new_leader") || die "metrics"
[ "$n_after" -gt "$n_before" ] || die "the new leader sent no AEP request for the change"
mapfile -t pods < <(ready_pods $ns $sel)
for p in "${pods[@]}"; do
  [ "$p" = "$new_leader" ] && continue
  n=$(pod_aep_requests $ns "$p") || die "metrics"
  echo "follower $p sent $n AEP requests"
  [ "$n" = 0 ] || die "the follower $p sent $n AEP requests"
done
echo "converged (generation $new_gen); the new leader $new_leader sent $((n_after - n_before)) AEP requests for it ($n_after in all)"
stop_sampler
check_samples "$work/failover.tsv" || die "fail-over samples"

step "kubectl rollout restart, Lease and Pods sampled every 200 ms"
start_sampler "$work/restart.tsv"
sleep 1
kubectl -n $ns rollout restart deploy/audience-operator >/dev/null
kubectl -n $ns rollout status deploy/audience-operator --timeout=240s || die "rollout restart"
wait_until 60 "2 Pods Ready after the restart" two_ready
wait_until 60 "a Lease holder after the restart" has_holder
sleep 2
stop_sampler
check_samples "$work/restart.tsv" || die "rollout-restart samples"
n_changes=$(awk -F'\t' 'BEGIN{p=""} $2!=p {n++; p=$2} END{print n-1}' "$work/restart.tsv")
echo "Lease holder changed $n_changes times during the restart"
mapfile -t pods < <(ready_pods $ns $sel)
leader=$(lease_holder $ns $lease)
for p in "${pods[@]}"; do
  n=$(pod_aep_requests $ns "$p") || die "metrics"
  if [ "$p" = "$leader" ]; then echo "leader $p sent $n AEP requests"; else
    echo "follower $p sent $n AEP requests"
    [ "$n" = 0 ] || die "the follower $p sent $n AEP requests"
  fi
done

step "Uninstall as documented: ExternalAudiences first, then kubectl delete -k"
t=$(now_ms)
kubectl delete ea --all -A --timeout=120s >/dev/null || die "deleting the ExternalAudiences"
echo "ExternalAudiences deleted (their finalizers released by the operator) in $(secs $(($(now_ms) - t)))"
t=$(now_ms)
kubectl delete -k "$k" --wait=false >/dev/null || die "kubectl delete -k"
gone() { ! kubectl get "$@" >/dev/null 2>&1; }
no_pods() { [ -z "$(kubectl -n $ns get pods -o name 2>/dev/null)" ]; }
wait_until 120 "the operator's Pods gone" no_pods
echo "kubectl delete -k: the operator's Pods gone in $(secs $(($(now_ms) - t)))"
wait_until 120 "namespace $ns gone" gone namespace $ns
echo "kubectl delete -k: namespace $ns gone in $(secs $(($(now_ms) - t)))"
wait_until 60 "the CRDs gone" gone crd externalaudiences.aep.audience-operator.dev
wait_until 60 "the CRDs gone" gone crd audienceactivations.aep.audience-operator.dev
left=$(
  kubectl get crd -o name | grep -c 'aep.audience-operator.dev' || true
)
[ "$left" = 0 ] || die "$left CRDs left"
left_rbac=$(kubectl get clusterrole,clusterrolebinding -l app.kubernetes.io/part-of=audience-operator -o name | wc -l)
[ "$left_rbac" = 0 ] || die "$left_rbac cluster RBAC objects left"
[ -z "$(kubectl -n marketing get secret aep-credentials -o jsonpath='{.metadata.finalizers}' 2>/dev/null)" ] ||
  die "the credentials Secret still has finalizers"
echo "nothing left: namespace $ns, CRDs and cluster RBAC gone; the Secret has no finalizer"
read -r emu_aep2 emu_tokens2 < <(emu_received)
deletes=$(emu_stats | python3 -c 'import json,sys; print(json.load(sys.stdin).get("received",{}).get("delete_audience",0))')
echo "emulator: $emu_aep2 AEP requests, $emu_tokens2 token requests in all so far; delete_audience received $deletes times (deletionPolicy: Delete)"
[ "$deletes" -ge 1 ] || die "the seed's audience was not deleted in AEP"

step "helm install (same image and flags, watchNamespaces={marketing,sales}) to the seed example Ready in both"
kubectl create namespace $ns >/dev/null
kubectl create namespace sales >/dev/null
kubectl -n sales create secret generic aep-credentials \
  --from-literal=clientId=local-client --from-literal=clientSecret=local-secret \
  --from-literal=orgId=LOCAL0RG@AdobeOrg >/dev/null
kubectl label namespace $ns pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/enforce-version=latest >/dev/null
# The chart has a value for the activation poll interval (a second flag would be refused); the
# other flags go to extraArgs.
helm_args=(--set "image.repository=${pod_image%:*}" --set "image.tag=${pod_image##*:}" --set image.pullPolicy=Never
  --set activationPollInterval=5s --set 'watchNamespaces={marketing,sales}')
i=0
for a in "${op_args[@]}"; do
  case "$a" in --activation-poll-interval=*) continue ;; esac
  helm_args+=(--set-string "extraArgs[$i]=$a")
  i=$((i + 1))
done
"$helm" install audience-operator deploy/helm/audience-operator -n $ns "${helm_args[@]}" --wait --timeout 180s >/dev/null ||
  die "helm install"
wait_until 60 "2 Pods Ready (Helm)" two_ready
wait_until 60 "a Lease holder (Helm)" bash -c "[ -n \"\$(kubectl -n $ns get lease -o jsonpath='{.items[0].spec.holderIdentity}' 2>/dev/null)\" ]"
kubectl -n $ns get pods -o wide
cluster_rbac=$(kubectl get clusterrole,clusterrolebinding -o name | grep -c audience-operator || true)
[ "$cluster_rbac" = 0 ] || die "$cluster_rbac cluster RBAC objects for a namespace list"
kubectl apply -f deploy/samples/loyalty-members.yaml >/dev/null
sed -e 's/namespace: marketing/namespace: sales/' -e 's/name: Loyalty members/name: Loyalty members (sales)/' \
  deploy/samples/loyalty-members.yaml | kubectl apply -f - >/dev/null
for n in marketing sales; do
  kubectl -n $n wait --for=condition=Ready --timeout=180s externalaudience/loyalty-members || die "seed not Ready in $n (Helm)"
  kubectl -n $n get externalaudience loyalty-members -o wide
done
echo "one release watching marketing and sales with a Role in each, no cluster RBAC: both seeds Ready"

step "helm uninstall (ExternalAudiences first)"
kubectl delete ea --all -A --timeout=120s >/dev/null || die "deleting the ExternalAudiences"
"$helm" uninstall audience-operator -n $ns --wait --timeout 120s >/dev/null || die "helm uninstall"
wait_until 60 "Helm's Pods gone" bash -c "[ -z \"\$(kubectl -n $ns get pods -o name)\" ]"
kept=$(kubectl get crd -o name | grep -c 'aep.audience-operator.dev' || true)
left_rbac=$(kubectl get clusterrole,clusterrolebinding -o name | grep -c audience-operator || true)
echo "after helm uninstall: Pods gone, $left_rbac cluster RBAC objects, $kept CRDs kept (the chart's crds.keep: true)"
[ "$left_rbac" = 0 ] || die "$left_rbac cluster RBAC objects left by helm uninstall"
left_roles=$(kubectl get role,rolebinding -n marketing -o name; kubectl get role,rolebinding -n sales -o name)
[ -z "$left_roles" ] || die "Roles left in the watched namespaces by helm uninstall: $left_roles"
deletes2=$(emu_stats | python3 -c 'import json,sys; print(json.load(sys.stdin).get("received",{}).get("delete_audience",0))')
[ "$deletes2" -ge $((deletes + 2)) ] || die "the Helm install's seed audiences were not deleted in AEP"
echo "both seeds' audiences deleted in AEP (delete_audience received $deletes2 times in all)"
kubectl delete namespace sales --wait=false >/dev/null

close_step
ok=1
