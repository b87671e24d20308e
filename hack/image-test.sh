#!/usr/bin/env bash
# `make test-image`: the built image, run the way a Pod runs it, makes the seed example Ready.
#
#   local control plane (etcd + kube-apiserver + kube-controller-manager), the CRD and
#   deploy/base/rbac.yaml + AEP emulator + namespace `marketing` with the credentials Secret and
#   the seed example + the image's ENTRYPOINT with the args and env of deploy/base/deployment.yaml
#   (its downward-API env emulated), as a container:
#       rootfs from `buildah from` the image, mounted READ-ONLY (buildah 1.28's `run` has no
#       --read-only, so this script is the runtime: its own mount, PID, IPC and UTS namespaces,
#       chroot into the rootfs, uid:gid from the image's USER, no new privileges, no capabilities),
#       the ServiceAccount volume at /var/run/secrets/kubernetes.io/serviceaccount (the operator
#       identity's token, the control plane's CA, the namespace), KUBERNETES_SERVICE_HOST/PORT
#       (in-cluster config), host network
#   -> Ready, probes answer, uid 65532 and a read-only root seen in /proc of the running process,
#      the rootfs unchanged afterwards. Everything is torn down on every exit path.
#
#   IMAGE=name:tag                  the image (default audience-operator:<crate version>)
#   READY_TIMEOUT=180               seconds to wait for Ready
#   KEEP_LOGS=1                     copy the logs to target/image-test/ before cleaning up
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
self="$root/hack/image-test.sh"

# --- The container's init: runs as root inside fresh mount/PID/IPC/UTS namespaces -------------
# Called by the main part below through `unshare`; sets up the mounts a kubelet would give the
# Pod, makes the root read-only, then becomes the image's process (PID 1 of the namespace).
if [ "${1:-}" = __container ]; then
  shift
  rootfs=$1 sa=$2 etc_dir=$3 user=$4 pod_name=$5
  shift 5
  # Everything after `--` is `NAME=value` env, then `--`, then the command line.
  env_args=()
  while [ "$1" != -- ]; do env_args+=("$1"); shift; done
  shift
  hostname "$pod_name"
  mount --bind "$rootfs" "$rootfs"
  mount -t proc -o nosuid,nodev,noexec proc "$rootfs/proc"
  mount -t tmpfs -o nosuid,noexec,mode=0755,size=64k tmpfs "$rootfs/dev"
  for d in null zero full random urandom; do
    touch "$rootfs/dev/$d"
    mount --bind "/dev/$d" "$rootfs/dev/$d"
  done
  mount -o remount,bind,ro,nosuid,noexec "$rootfs/dev"
  mount --bind "$sa" "$rootfs/var/run/secrets/kubernetes.io/serviceaccount"
  mount -o remount,bind,ro,nosuid,nodev,noexec "$rootfs/var/run/secrets/kubernetes.io/serviceaccount"
  for f in hosts hostname resolv.conf; do
    mount --bind "$etc_dir/$f" "$rootfs/etc/$f"
    mount -o remount,bind,ro,nosuid,nodev,noexec "$rootfs/etc/$f"
  done
  # readOnlyRootFilesystem: true
  mount -o remount,bind,ro,nosuid,nodev "$rootfs"
  # allowPrivilegeEscalation: false; the uid change clears every capability (drop ALL).
  exec /usr/bin/env -i "${env_args[@]}" \
    /usr/bin/setpriv --no-new-privs --inh-caps=-all --clear-groups \
    /usr/sbin/chroot --userspec="$user" "$rootfs" "$@"
fi

# --- The test ---------------------------------------------------------------------------------
cd "$root"
log() { printf '==> %s\n' "$*"; }
die() { echo "image-test: $*" >&2; exit 1; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { printf '%d.%01ds' $(($1 / 1000)) $((($1 % 1000) / 100)); }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
image=${IMAGE:-audience-operator:$version}
ready_timeout=${READY_TIMEOUT:-180}
bah=(buildah --storage-driver vfs)

# The pinned kubectl first on PATH, as the Makefile does.
bin_dir=${ENVTEST_BIN_DIR:-$(hack/envtest/build.sh)}
export PATH="$bin_dir:$PATH" ENVTEST_BIN_DIR="$bin_dir"
for tool in unshare setpriv chroot mount python3 curl; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
if ! command -v buildah >/dev/null; then
  log "Installing buildah"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q buildah >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q buildah >/dev/null; }
fi

# The whole workspace, as hack/demo.sh does: alone, the envtest and emulator crates enable no
# k8s-openapi version feature (the root package does).
cargo build --locked --workspace --bins -q
dbg="$root/target/debug"

work=$(mktemp -d /tmp/audience-operator-image-test.XXXXXX)
chmod 0755 "$work"
ctr="" launcher_pid="" main_pid="" emulator_pid="" cluster_started=0 ok=0

stop_pid() { # pid, grace seconds: SIGTERM, then SIGKILL after the grace period
  local pid=$1 grace=$2 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ "$rc" != 0 ] || [ "$ok" != 1 ]; then
    [ -f "$work/controller.log" ] && { echo "--- container log (tail)"; tail -n 40 "$work/controller.log"; } >&2
    [ -f "$work/emulator.log" ] && { echo "--- emulator log (tail)"; tail -n 10 "$work/emulator.log"; } >&2
  fi
  if [ "${KEEP_LOGS:-0}" = 1 ]; then
    mkdir -p "$root/target/image-test" && cp "$work"/*.log "$root/target/image-test/" 2>/dev/null
  fi
  # The container: its process is PID 1 of its own PID namespace, so when it goes, the namespace
  # goes with it; unshare --kill-child SIGKILLs it should the launcher die first.
  [ -n "$main_pid" ] && stop_pid "$main_pid" 10
  if [ -n "$launcher_pid" ]; then
    stop_pid "$launcher_pid" 2
    wait "$launcher_pid" 2>/dev/null
  fi
  [ -n "$emulator_pid" ] && { stop_pid "$emulator_pid" 5; wait "$emulator_pid" 2>/dev/null; }
  [ "$cluster_started" = 1 ] && "$dbg/envtest" stop --dir "$work/cluster" >/dev/null 2>&1
  [ -n "$ctr" ] && { "${bah[@]}" umount "$ctr" >/dev/null 2>&1; "${bah[@]}" rm "$ctr" >/dev/null 2>&1; }
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The image, in buildah's storage (imported from the Docker daemon if `make image` used docker).
if ! "${bah[@]}" inspect --type image "$image" >/dev/null 2>&1; then
  if command -v docker >/dev/null && docker image inspect "$image" >/dev/null 2>&1; then
    id=$("${bah[@]}" pull -q "docker-daemon:$image")
    "${bah[@]}" tag "$id" "$image"
  fi
  "${bah[@]}" inspect --type image "$image" >/dev/null 2>&1 || die "no image $image: run make image"
fi
image_size=$("${bah[@]}" images --format '{{.Size}}' "$image" | head -n1)

log "Starting the local control plane"
cluster_started=1
eval "$("$dbg/envtest" start --dir "$work/cluster" 2>"$work/envtest.log")"
export KUBECONFIG
server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
api_port=${server##*:}
[[ "$server" == https://127.0.0.1:* && "$api_port" =~ ^[0-9]+$ ]] || die "unexpected apiserver URL $server"

log "Installing the CRD and deploy/base/rbac.yaml"
kubectl apply --server-side -k crds >/dev/null
hack/wait-crds.sh
kubectl apply --server-side -f deploy/base/rbac.yaml >/dev/null

log "Starting the AEP emulator"
"$dbg/aep-emulator" --listen 127.0.0.1:0 --zero-latency >"$work/emulator.out" 2>"$work/emulator.log" &
emulator_pid=$!
for _ in $(seq 1 100); do grep -qs '^listening on ' "$work/emulator.out" && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/emulator.out")
[ -n "$addr" ] || die "the emulator did not start"

log "Creating namespace marketing, the credentials Secret and the seed example"
kubectl create namespace marketing >/dev/null
kubectl -n marketing create secret generic aep-credentials \
  --from-literal=clientId=local-client --from-literal=clientSecret=local-secret \
  --from-literal=orgId=LOCAL0RG@AdobeOrg >/dev/null
kubectl apply -f deploy/samples/loyalty-members.yaml >/dev/null

# What the Pod would run: deploy/base/deployment.yaml's container (validated by the apiserver) on top
# of the image's config, with Kubernetes' rules (command replaces ENTRYPOINT, args replace CMD).
kubectl create --dry-run=server -o json -f deploy/base/deployment.yaml >"$work/deployment.json"
"${bah[@]}" inspect --type image "$image" >"$work/image.json"
pod_name=audience-operator-image-test
python3 - "$work" "$pod_name" "$api_port" "$addr" "$image" <<'PY'
import json, sys
work, pod_name, api_port, addr, image = sys.argv[1:]
dep = json.load(open(f"{work}/deployment.json"))
cfg = json.load(open(f"{work}/image.json"))["OCIv1"]["config"]
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
if c.get("image") != image:
    print(f"note: deploy/base/deployment.yaml runs image {c.get('image')!r}; testing {image!r}", file=sys.stderr)
entry = c.get("command") or cfg.get("Entrypoint") or []
args = c.get("args") if "args" in c else ([] if c.get("command") else (cfg.get("Cmd") or []))
# The test's own (replacing those of the Deployment: the flags take one value): the emulator as
# AEP and IMS, and metrics on a free loopback port (host network here, not a Pod's own).
own = {"--aep-platform-url": f"http://{addr}", "--aep-ims-url": f"http://{addr}",
       "--metrics-addr": "127.0.0.1:0"}
kept, skip = [], False
for a in args:
    if skip:
        skip = False
    elif a in own:
        skip = True
    elif a.split("=", 1)[0] not in own:
        kept.append(a)
argv = entry + kept + [x for kv in own.items() for x in kv]
ns = dep["metadata"]["namespace"]
downward = {"metadata.name": pod_name, "metadata.namespace": ns, "spec.nodeName": "127.0.0.1",
            "spec.serviceAccountName": pod.get("serviceAccountName", "default"),
            "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
env = {}
for kv in cfg.get("Env") or []:
    k, _, v = kv.partition("=")
    env[k] = v
env.update({"HOSTNAME": pod_name, "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": api_port, "KUBERNETES_SERVICE_PORT_HTTPS": api_port,
            "KUBERNETES_PORT": f"tcp://127.0.0.1:{api_port}"})
for e in c.get("env") or []:
    if "value" in e:
        env[e["name"]] = e["value"]
    elif "fieldRef" in e.get("valueFrom", {}):
        path = e["valueFrom"]["fieldRef"]["fieldPath"]
        if path not in downward:
            sys.exit(f"deploy/base/deployment.yaml env {e['name']}: fieldRef {path} is not emulated here")
        env[e["name"]] = downward[path]
    elif "valueFrom" in e:
        sys.exit(f"deploy/base/deployment.yaml env {e['name']}: only value and fieldRef are emulated here")
    else:
        env[e["name"]] = ""
sc = c.get("securityContext") or {}
psc = pod.get("securityContext") or {}
uid = sc.get("runAsUser", psc.get("runAsUser"))
gid = sc.get("runAsGroup", psc.get("runAsGroup"))
iu, _, ig = (cfg.get("User") or "").partition(":")
user = f"{uid if uid is not None else iu}:{gid if gid is not None else ig}"
if sc.get("readOnlyRootFilesystem") is not True:
    print("note: deploy/base/deployment.yaml does not ask for readOnlyRootFilesystem; tested read-only anyway", file=sys.stderr)
open(f"{work}/user", "w").write(user + "\n")
open(f"{work}/sa-namespace", "w").write(ns)
with open(f"{work}/env", "w") as f:
    for k, v in env.items():
        f.write(f"{k}={v}\0")
with open(f"{work}/argv", "w") as f:
    for a in argv:
        f.write(a + "\0")
PY
user=$(cat "$work/user")
mapfile -d '' -t pod_env <"$work/env"
mapfile -d '' -t argv <"$work/argv"
[ "$user" = 65532:65532 ] || die "the Pod would run as '$user', expected 65532:65532 (image USER)"

# The ServiceAccount volume, as the kubelet projects it (files 0644 in a directory 0755).
sa="$work/serviceaccount"
mkdir -m 0755 "$sa"
awk -F, -v u="$(kubectl config view --kubeconfig "$OPERATOR_KUBECONFIG" --minify -o jsonpath='{.users[0].name}')" \
  '$2 == u { printf "%s", $1 }' "$ENVTEST_DIR/tokens.csv" >"$sa/token"
[ -s "$sa/token" ] || die "no token for the operator identity in $ENVTEST_DIR/tokens.csv"
cp "$ENVTEST_DIR/pki/ca.crt" "$sa/ca.crt"
cat "$work/sa-namespace" >"$sa/namespace"
chmod 0644 "$sa"/*
# /etc files the kubelet mounts (host network: the node's hosts and resolv.conf).
mkdir -m 0755 "$work/etc"
cp /etc/hosts /etc/resolv.conf "$work/etc/" 2>/dev/null || true
touch "$work/etc/hosts" "$work/etc/resolv.conf"
echo "$pod_name" >"$work/etc/hostname"
chmod 0644 "$work/etc"/*

log "Running $image as a Pod would: ${argv[*]}"
ctr=$("${bah[@]}" from -q --pull=never "$image")
rootfs=$("${bah[@]}" mount "$ctr")
# Mount points, created in the container's own layer as a runtime does (the image is untouched).
mkdir -p "$rootfs"/{proc,dev,etc,var/run/secrets/kubernetes.io/serviceaccount}
touch "$rootfs"/etc/{hosts,hostname,resolv.conf}
manifest() { (cd "$rootfs" && find . -xdev -printf '%M %U:%G %s %T@ %p\n' | LC_ALL=C sort); }
manifest >"$work/rootfs.before"

started=$(now_ms)
unshare --mount --propagation private --pid --ipc --uts --fork --kill-child=SIGKILL -- \
  "$self" __container "$rootfs" "$sa" "$work/etc" "$user" "$pod_name" "${pod_env[@]}" -- "${argv[@]}" \
  >"$work/controller.log" 2>&1 &
launcher_pid=$!
for _ in $(seq 1 100); do
  main_pid=$(pgrep -P "$launcher_pid" | head -n1 || true)
  if [ -n "$main_pid" ] && [ "$(readlink "/proc/$main_pid/exe" 2>/dev/null || true)" != "" ] &&
    [ "$(tr '\0' ' ' <"/proc/$main_pid/cmdline" 2>/dev/null | cut -d' ' -f1)" = "${argv[0]}" ]; then
    break
  fi
  kill -0 "$launcher_pid" 2>/dev/null || die "the container exited at once"
  sleep 0.1
done
[ -n "$main_pid" ] || die "no container process"

log "Waiting for loyalty-members to be Ready (deadline ${ready_timeout}s)"
deadline=$(($(date +%s) + ready_timeout))
until kubectl -n marketing wait --for=condition=Ready --timeout=2s externalaudience/loyalty-members >/dev/null 2>&1; do
  kill -0 "$main_pid" 2>/dev/null || die "the container exited before Ready"
  [ "$(date +%s)" -lt "$deadline" ] || die "loyalty-members not Ready within ${ready_timeout}s"
done
ready_ms=$(($(now_ms) - started))

# What the running process is, read from /proc as the kernel sees it.
status=$(cat "/proc/$main_pid/status")
uid_line=$(grep '^Uid:' <<<"$status" | tr -s '[:space:]' ' ')
gid_line=$(grep '^Gid:' <<<"$status" | tr -s '[:space:]' ' ')
[ "$uid_line" = "Uid: 65532 65532 65532 65532 " ] || die "container process $uid_line, expected uid 65532"
[ "$gid_line" = "Gid: 65532 65532 65532 65532 " ] || die "container process $gid_line, expected gid 65532"
grep -q '^NoNewPrivs:[[:space:]]*1$' <<<"$status" || die "no_new_privs is not set"
grep -q '^CapEff:[[:space:]]*0*$' <<<"$status" || die "the container process has capabilities"
root_opts=$(awk '$5 == "/" { print $6 }' "/proc/$main_pid/mountinfo")
[[ ",$root_opts," == *,ro,* ]] || die "the container's / is mounted '$root_opts', not read-only"
ns_pid=$(awk '/^NSpid:/ { print $NF }' <<<"$status")
[ "$ns_pid" = 1 ] || die "the container process is PID $ns_pid in its namespace, expected 1"
[ "$(readlink "/proc/$main_pid/root")" = "$rootfs" ] || die "the container process is not in the image's rootfs"

# The kubelet's probes (deploy/base/deployment.yaml: readiness /readyz, liveness /healthz).
metrics=$(grep -o 'Serving /metrics[^}]*' "$work/controller.log" | grep -oE '127\.0\.0\.1:[0-9]+' | head -n1 || true)
[ -n "$metrics" ] || metrics=$(grep 'Serving /metrics' "$work/controller.log" | grep -oE '127\.0\.0\.1:[0-9]+' | head -n1 || true)
[ -n "$metrics" ] || die "the metrics address is not in the log"
probe() { # path: like a kubelet's httpGet probe, a few periods before giving up
  local i code=""
  for i in $(seq 1 20); do
    code=$(curl -s -o "$work/probe.body" -w '%{http_code}' "http://$metrics$1" || true)
    [ "$code" = 200 ] && return 0
    sleep 0.5
  done
  die "$1 answered ${code:-nothing}: $(head -c 300 "$work/probe.body" 2>/dev/null)"
}
probe /healthz
probe /readyz

kubectl -n marketing get externalaudience loyalty-members -o wide

# A Pod's termination: SIGTERM to PID 1, then the rootfs must be as it was.
stop_started=$(now_ms)
kill -TERM "$main_pid"
for _ in $(seq 1 100); do kill -0 "$main_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$main_pid" 2>/dev/null && die "the container did not stop within 10s of SIGTERM"
stop_ms=$(($(now_ms) - stop_started))
wait "$launcher_pid" 2>/dev/null && exit_code=0 || exit_code=$?
main_pid="" launcher_pid=""
[ "$exit_code" = 0 ] || die "the container exited with $exit_code after SIGTERM"
manifest >"$work/rootfs.after"
diff -u "$work/rootfs.before" "$work/rootfs.after" >&2 || die "the container's root filesystem changed"

ok=1
echo
echo "image-test: $image (${image_size}) ran as uid/gid $user, PID 1, read-only root, no capabilities, no_new_privs"
echo "image-test: seed example Ready $(secs "$ready_ms") after start; probes OK; stopped on SIGTERM in $(secs "$stop_ms") (exit 0); rootfs unchanged"
