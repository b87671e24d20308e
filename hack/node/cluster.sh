#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, for end-to-end runs of the operator's
# Deployment as Pods (hack/e2e-cluster.sh, `make e2e-cluster`):
#
#   etcd, kube-apiserver, kube-controller-manager (hack/envtest/build.sh)
#   kube-scheduler, kubelet, containerd + runc + CNI bridge (hack/node/build.sh)
#
#   hack/node/cluster.sh up          bring it up, print what to export, stay until Ctrl-C/SIGTERM
#   hack/node/cluster.sh run CMD...  bring it up, run CMD with KUBECONFIG etc. exported, tear down;
#                                    exits with CMD's status
#   hack/node/cluster.sh down        tear down what a killed run left behind
#   . hack/node/cluster.sh           (sourced) only define cluster_up / cluster_down /
#                                    cluster_load_image / cluster_adopt
#
# Network, without kube-proxy: the Pods are on the bridge aocni0 (10.88.0.0/24, host 10.88.0.1,
# also the node's InternalIP). The Service range is 10.89.0.0/24, so the `kubernetes` Service's
# ClusterIP is 10.89.0.1; that address is assigned on the host (a veth, aosvc0: this kernel has no
# `dummy` links) and the kube-apiserver listens on it, port 443. A Pod's in-cluster config
# (KUBERNETES_SERVICE_HOST=10.89.0.1, port 443) thus reaches the apiserver directly; the Pods'
# only route out of their subnet is 10.89.0.0/24 via the host, and nothing is forwarded or
# masqueraded. Other Services have no data path (nothing here needs one).
#
# The host is cgroup v1: the kubelet runs with failCgroupV1: false (it refuses v1 by default),
# cgroupDriver cgroupfs and its pods under the cgroup /audience-operator-node. Root has no
# CAP_SYS_RESOURCE here, so containerd clamps oom_score_adj (restrict_oom_score_adj).
#
# Cleanup, on every exit path: each daemon in its own process group, stopped (TERM, then KILL)
# in reverse order after the CRI's pod sandboxes are removed; any process left in the node's
# cgroups or running the node's shim is killed; mounts under the state dir unmounted; links
# and cgroups deleted; iptables rules and chains added while up removed. A watchdog process holds
# the read end of a FIFO whose write end only this shell holds: if the shell dies without its
# trap (SIGKILL), the watchdog runs the same teardown.
#
#   NODE_DIR=/tmp/audience-operator-node   state directory (one cluster at a time: fixed names)
#   NODE_NAME=audience-operator-node       the Node's name
#   KEEP_LOGS=dir                           copy the daemons' logs there at teardown
#   NODE_EXTRA_CA=file                      PEM CA(s) added to the root CA bundle Pods get
#                                           (kube-controller-manager --root-ca-file)
set -uo pipefail

_node_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_node_root=$(cd "$_node_here/../.." && pwd)

NODE_DIR=${NODE_DIR:-/tmp/audience-operator-node}
NODE_NAME=${NODE_NAME:-audience-operator-node}
NODE_BRIDGE=aocni0
NODE_SVC_LINK=aosvc0
NODE_POD_CIDR=10.88.0.0/24
NODE_IP=10.88.0.1
NODE_SVC_CIDR=10.89.0.0/24
NODE_API_IP=10.89.0.1
NODE_CGROUP=audience-operator-node
NODE_CNI_NETWORK=audience-operator-node
NODE_CONTROLLERS=(cpu cpuacct cpuset memory devices freezer blkio pids systemd unified)

_nlog() { printf '[node %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
_ndie() { _nlog "ERROR: $*"; return 1; }

_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until "$@" succeeds; fails after $1 seconds or as soon as the daemon named $2 is gone.
_wait_for() { # timeout-seconds daemon-name command...
  local timeout=$1 name=$2 deadline
  shift 2
  deadline=$(($(date +%s) + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$name" ] && ! kill -0 "$(cat "$NODE_DIR/pids/$name" 2>/dev/null || echo 0)" 2>/dev/null; then
      _nlog "$name exited; last lines of $NODE_DIR/logs/$name.log:"
      tail -n 30 "$NODE_DIR/logs/$name.log" >&2
      return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      _nlog "$name not ready within ${timeout}s; last lines of its log:"
      [ -n "$name" ] && tail -n 30 "$NODE_DIR/logs/$name.log" >&2
      return 1
    fi
    sleep 0.2
  done
}

# Starts a daemon in its own session/process group (setsid without fork: a background child of a
# script is no group leader), logs to logs/NAME.log, pid in pids/NAME, order in pids/order.
# fd 9 (the watchdog FIFO's write end) is closed in the child.
_start() { # name command...
  local name=$1
  shift
  setsid "$@" </dev/null >>"$NODE_DIR/logs/$name.log" 2>&1 9>&- &
  echo $! >"$NODE_DIR/pids/$name"
  echo "$name" >>"$NODE_DIR/pids/order"
}

# Registers a process the caller started (e.g. the AEP emulator) for the teardown and watchdog.
# The caller must have started it with `9>&-` (else the watchdog cannot tell this shell died).
cluster_adopt() { # name pid
  echo "$2" >"$NODE_DIR/pids/$1"
  echo "$1" >>"$NODE_DIR/pids/order"
}

_stop_group() { # pid grace-seconds
  local pid=$1 grace=$2 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < grace * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null
  kill -KILL "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
}

# --- PKI and kubeconfigs ------------------------------------------------------------------------
_pki() {
  local d=$NODE_DIR/pki
  mkdir -p "$d" && chmod 0700 "$d"
  (
    set -e
    cd "$d"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -subj "/CN=audience-operator-node-ca" -days 2 -out ca.crt \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    leaf() { # name subject extendedKeyUsage [subjectAltName]
      openssl ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
      {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$3"
        [ -n "${4:-}" ] && echo "subjectAltName=$4"
      } >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 12)" \
        -days 2 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    leaf apiserver "/CN=kube-apiserver" serverAuth \
      "IP:$NODE_API_IP,IP:$NODE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
    leaf apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client" clientAuth
    leaf admin "/O=system:masters/CN=admin" clientAuth
    leaf controller-manager "/CN=system:kube-controller-manager" clientAuth
    leaf scheduler "/CN=system:kube-scheduler" clientAuth
    leaf kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
    chmod 0600 ./*.key
  )
}

_kubeconfig() { # file user-cert-name
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $NODE_NAME
  cluster:
    server: https://$NODE_API_IP:443
    certificate-authority: $NODE_DIR/pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $NODE_DIR/pki/$2.crt
    client-key: $NODE_DIR/pki/$2.key
contexts:
- name: $NODE_NAME
  context: {cluster: $NODE_NAME, user: $2}
current-context: $NODE_NAME
EOF
}

# --- Network ------------------------------------------------------------------------------------
_net_up() {
  ip link add "$NODE_BRIDGE" type bridge || return 1
  ip addr add "$NODE_IP/${NODE_POD_CIDR#*/}" dev "$NODE_BRIDGE" || return 1
  ip link set "$NODE_BRIDGE" up || return 1
  ip link add "$NODE_SVC_LINK" type veth peer name "${NODE_SVC_LINK}p" || return 1
  ip addr add "$NODE_API_IP/32" dev "$NODE_SVC_LINK" || return 1
  ip link set "${NODE_SVC_LINK}p" up && ip link set "$NODE_SVC_LINK" up || return 1
  # The apiserver binds this address as soon as it is up (no DAD for IPv4, but wait for the route).
  _wait_for 10 "" ip route get "$NODE_API_IP"
}

_cni_conf() {
  mkdir -p "$NODE_DIR/cni/net.d" "$NODE_DIR/cni/ipam"
  # The bridge exists already (with the host address); isGateway false: the plugin neither
  # re-addresses it nor turns on IP forwarding. Routes: only the Service range, via the host.
  cat >"$NODE_DIR/cni/net.d/10-$NODE_CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$NODE_CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_DIR/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$NODE_SVC_CIDR", "gw": "$NODE_IP"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

# --- cgroups: the kubelet's root, present in every mounted v1 hierarchy -------------------------
_cgroup_up() {
  local c d
  for c in "${NODE_CONTROLLERS[@]}"; do
    d=/sys/fs/cgroup/$c
    [ -d "$d" ] || continue
    mkdir -p "$d/$NODE_CGROUP" || return 1
    if [ "$c" = cpuset ]; then
      cat "$d/cpuset.cpus" >"$d/$NODE_CGROUP/cpuset.cpus"
      cat "$d/cpuset.mems" >"$d/$NODE_CGROUP/cpuset.mems"
    fi
  done
}

# --- iptables: what was there before, to remove only what was added -------------------------
_fw_snapshot() { # file
  {
    for t in iptables ip6tables; do
      command -v "$t-save" >/dev/null && "$t-save" 2>/dev/null | sed "s/^/$t /"
    done
  } >"$1"
}

_fw_undo() {
  [ -f "$NODE_DIR/fw.before" ] || return 0
  _fw_snapshot "$NODE_DIR/fw.after"
  python3 - "$NODE_DIR/fw.before" "$NODE_DIR/fw.after" <<'PY'
import shlex, subprocess, sys
def parse(path):
    rules, chains = [], set()
    table = None
    for line in open(path):
        tool, _, rest = line.rstrip("\n").partition(" ")
        if rest.startswith("*"):
            table = rest[1:]
        elif rest.startswith(":"):
            chains.add((tool, table, rest[1:].split()[0]))
        elif rest.startswith("-A "):
            rules.append((tool, table, rest))
    return rules, chains
before_rules, before_chains = parse(sys.argv[1])
after_rules, after_chains = parse(sys.argv[2])
old = set(before_rules)
for tool, table, rule in after_rules:
    if (tool, table, rule) not in old:
        args = shlex.split(rule)
        args[0] = "-D"
        subprocess.run([tool, "-w", "-t", table] + args, check=False, stderr=subprocess.DEVNULL)
        print(f"removed {tool} -t {table} {rule}")
for tool, table, chain in sorted(after_chains - before_chains):
    subprocess.run([tool, "-w", "-t", table, "-F", chain], check=False, stderr=subprocess.DEVNULL)
for tool, table, chain in sorted(after_chains - before_chains):
    subprocess.run([tool, "-w", "-t", table, "-X", chain], check=False, stderr=subprocess.DEVNULL)
    print(f"removed {tool} -t {table} chain {chain}")
# A table this run brought into being (e.g. the kubelet's canary chains in mangle) stays, empty,
# after the undo; with the nf_tables backend it can be dropped as a whole.
version = subprocess.run(["iptables", "-V"], capture_output=True, text=True).stdout
if "nf_tables" in version:
    tables = lambda chains: {(t, tb) for t, tb, _ in chains}
    for tool, table in sorted(tables(after_chains) - tables(before_chains)):
        family = "ip6" if tool == "ip6tables" else "ip"
        subprocess.run(["nft", "delete", "table", family, table], check=False, stderr=subprocess.DEVNULL)
        print(f"removed {family} table {table}")
PY
}

# --- Up -----------------------------------------------------------------------------------------
cluster_up() {
  local t0 k8s_bin node_bin
  t0=$(date +%s%N)
  command -v python3 >/dev/null && command -v openssl >/dev/null && command -v ip >/dev/null ||
    { _ndie "needs python3, openssl and iproute2"; return 1; }
  if [ -d "$NODE_DIR/pids" ] || ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    _nlog "a previous cluster's state is there ($NODE_DIR or link $NODE_BRIDGE): tearing it down first"
    cluster_down
  fi
  k8s_bin=${ENVTEST_BIN_DIR:-$("$_node_root/hack/envtest/build.sh")} || return 1
  node_bin=${NODE_BIN_DIR:-$("$_node_here/build.sh")} || return 1
  mkdir -p "$NODE_DIR"/{pids,logs,containerd,kubelet,pod-logs} || return 1
  echo "$k8s_bin" >"$NODE_DIR/k8s_bin"
  echo "$node_bin" >"$NODE_DIR/node_bin"
  export PATH="$node_bin:$k8s_bin:$PATH"

  # The watchdog: runs the teardown when the last writer of the FIFO (this shell) is gone.
  mkfifo "$NODE_DIR/alive"
  setsid bash -c 'exec 3<"$1"; cat <&3 >/dev/null; exec 3<&-; NODE_FROM_WATCHDOG=1 NODE_DIR=$2 "$3" down >>"$2.watchdog.log" 2>&1' \
    watchdog "$NODE_DIR/alive" "$NODE_DIR" "$_node_here/cluster.sh" </dev/null >/dev/null 2>&1 &
  echo $! >"$NODE_DIR/watchdog.pid"
  exec 9>"$NODE_DIR/alive"

  _fw_snapshot "$NODE_DIR/fw.before"
  # Host directories the runtime creates at fixed paths (the shims' sockets under
  # /run/containerd/s, libcni's cache under /var/lib/cni): removed at teardown if this run made them.
  for d in /run/containerd /var/lib/cni; do [ -e "$d" ] || echo "$d" >>"$NODE_DIR/host-dirs"; done
  _pki || { _ndie "certificates"; return 1; }
  _net_up || { _ndie "network setup"; return 1; }
  _cni_conf
  _cgroup_up || { _ndie "cgroup setup"; return 1; }
  # A caller's hook, once the host addresses exist (e.g. a test service listening on $NODE_IP).
  if declare -F cluster_hook_network_up >/dev/null; then
    cluster_hook_network_up || { _ndie "cluster_hook_network_up failed"; return 1; }
  fi

  local etcd_port etcd_peer kcm_port sched_port kubelet_port kubelet_hz
  etcd_port=$(_free_port) etcd_peer=$(_free_port) kcm_port=$(_free_port) sched_port=$(_free_port)
  kubelet_port=$(_free_port) kubelet_hz=$(_free_port)
  local pki=$NODE_DIR/pki
  _kubeconfig "$NODE_DIR/admin.kubeconfig" admin
  _kubeconfig "$NODE_DIR/controller-manager.kubeconfig" controller-manager
  _kubeconfig "$NODE_DIR/scheduler.kubeconfig" scheduler
  _kubeconfig "$NODE_DIR/kubelet.kubeconfig" kubelet
  export KUBECONFIG=$NODE_DIR/admin.kubeconfig

  _nlog "etcd"
  mkdir -m 0700 "$NODE_DIR/etcd"
  _start etcd "$k8s_bin/etcd" --data-dir="$NODE_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
    --initial-cluster="default=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync=true --log-level=warn
  _wait_for 30 etcd curl -fsS "http://127.0.0.1:$etcd_port/health" || return 1

  _nlog "kube-apiserver on https://$NODE_API_IP:443 (the kubernetes Service's ClusterIP)"
  _start kube-apiserver "$k8s_bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address="$NODE_API_IP" --secure-port=443 --advertise-address="$NODE_API_IP" \
    --cert-dir="$pki" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --service-cluster-ip-range="$NODE_SVC_CIDR" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction,ServiceAccount,PodSecurity \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$pki/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --profiling=false
  _wait_for 90 kube-apiserver curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://$NODE_API_IP:443/readyz" || return 1
  _wait_for 20 kube-apiserver kubectl get namespace default || return 1
  # The apiserver's own identity towards the kubelet (logs, exec): kubeadm's binding.
  kubectl create clusterrolebinding kube-apiserver-kubelet-client --clusterrole=system:kubelet-api-admin \
    --user=kube-apiserver-kubelet-client >/dev/null || return 1

  _nlog "kube-controller-manager"
  mkdir -p "$NODE_DIR/controller-manager"
  # The CA bundle published to every namespace as ConfigMap kube-root-ca.crt (a Pod's
  # .../serviceaccount/ca.crt): the cluster's CA, plus NODE_EXTRA_CA when set (a test server's
  # CA, so that Pods can trust it without any volume of their own).
  cat "$pki/ca.crt" >"$pki/root-ca.crt"
  if [ -n "${NODE_EXTRA_CA:-}" ]; then
    [ -s "$NODE_EXTRA_CA" ] || { _ndie "NODE_EXTRA_CA=$NODE_EXTRA_CA is empty or missing"; return 1; }
    cat "$NODE_EXTRA_CA" >>"$pki/root-ca.crt"
  fi
  _start kube-controller-manager "$k8s_bin/kube-controller-manager" \
    --kubeconfig="$NODE_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$NODE_DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$NODE_DIR/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$kcm_port" --cert-dir="$NODE_DIR/controller-manager" \
    --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/root-ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --cluster-name="$NODE_NAME" --controllers='*'
  _nlog "kube-scheduler"
  mkdir -p "$NODE_DIR/scheduler"
  _start kube-scheduler "$node_bin/kube-scheduler" \
    --kubeconfig="$NODE_DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig="$NODE_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig="$NODE_DIR/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$sched_port" --cert-dir="$NODE_DIR/scheduler" \
    --leader-elect=false

  _nlog "containerd"
  local sock=$NODE_DIR/containerd/containerd.sock pause_tar pause_name
  # The pod sandbox image hack/node/build.sh made (no registry to pull one from).
  pause_tar=$(ls "$node_bin"/pause-*.oci.tar | head -n1)
  pause_name="localhost/audience-operator-node/pause:$(basename "$pause_tar" .oci.tar | sed 's/^pause-//')"
  cat >"$NODE_DIR/containerd/config.toml" <<EOF
version = 3
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$sock"

[ttrpc]
  address = "$sock.ttrpc"

[debug]
  level = "info"

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "$NODE_DIR/containerd/opt"
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "$pause_name"
  [plugins.'io.containerd.cri.v1.runtime']
    netns_mounts_under_state_dir = true
    # This host gives root no CAP_SYS_RESOURCE: an oom_score_adj below containerd's own (the
    # kubelet asks -998 for sandboxes) fails in runc ("failed to update /proc/self/oom_score_adj:
    # Permission denied"). Clamp to containerd's own, as for rootless runtimes.
    restrict_oom_score_adj = true
    enable_unprivileged_ports = true
    enable_unprivileged_icmp = true
    cdi_spec_dirs = []
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "$node_bin/runc"
          Root = "$NODE_DIR/containerd/runc"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["$node_bin/cni"]
      conf_dir = "$NODE_DIR/cni/net.d"
      max_conf_num = 1
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
EOF
  _start containerd env PATH="$node_bin:$PATH" "$node_bin/containerd" --config "$NODE_DIR/containerd/config.toml"
  _wait_for 30 containerd "$node_bin/ctr" --address "$sock" version || return 1
  "$node_bin/ctr" --address "$sock" -n k8s.io images import --snapshotter overlayfs \
    --base-name "${pause_name%:*}" "$pause_tar" >/dev/null || { _ndie "importing the pause image"; return 1; }

  _nlog "kubelet (node $NODE_NAME, $NODE_IP)"
  cat >"$NODE_DIR/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host is cgroup v1 (no cgroup v2 hierarchy is in use): the kubelet refuses it by default.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$NODE_CGROUP
failSwapOn: false
containerRuntimeEndpoint: unix://$sock
address: $NODE_IP
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_hz
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: Webhook
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
podLogsDir: $NODE_DIR/pod-logs
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
registerNode: true
serializeImagePulls: false
# Images come from \`ctr images import\`, never from a registry: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
nodeStatusUpdateFrequency: 5s
EOF
  (
    cd "$pki" &&
      openssl ecparam -name prime256v1 -genkey -noout -out kubelet-serving.key 2>/dev/null &&
      openssl req -new -key kubelet-serving.key -subj "/O=system:nodes/CN=system:node:$NODE_NAME" -out k.csr 2>/dev/null &&
      printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:%s,DNS:%s\n' "$NODE_IP" "$NODE_NAME" >k.ext &&
      openssl x509 -req -in k.csr -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 12)" -days 2 -extfile k.ext -out kubelet-serving.crt 2>/dev/null &&
      rm -f k.csr k.ext && chmod 0600 kubelet-serving.key
  ) || { _ndie "kubelet serving certificate"; return 1; }
  _start kubelet "$node_bin/kubelet" --config="$NODE_DIR/kubelet/config.yaml" \
    --kubeconfig="$NODE_DIR/kubelet.kubeconfig" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --root-dir="$NODE_DIR/kubelet" --cert-dir="$NODE_DIR/kubelet/pki" -v=1
  _wait_for 60 kubelet curl -fsS "http://127.0.0.1:$kubelet_hz/healthz" || return 1
  _wait_for 30 kube-controller-manager curl -fsSk "https://127.0.0.1:$kcm_port/healthz" || return 1
  _wait_for 30 kube-scheduler curl -fsSk "https://127.0.0.1:$sched_port/healthz" || return 1
  _wait_for 90 kubelet kubectl get node "$NODE_NAME" || return 1
  if ! kubectl wait --for=condition=Ready --timeout=90s "node/$NODE_NAME" >/dev/null; then
    kubectl describe node "$NODE_NAME" >&2
    tail -n 40 "$NODE_DIR/logs/kubelet.log" >&2
    _ndie "node $NODE_NAME not Ready"
    return 1
  fi
  # The ServiceAccount of namespace default (the serviceaccount controller) and the root CA
  # ConfigMap (root-ca-cert-publisher): a Pod's API access needs both.
  _wait_for 30 kube-controller-manager kubectl -n default get serviceaccount default || return 1
  _wait_for 30 kube-controller-manager kubectl -n default get configmap kube-root-ca.crt || return 1

  cat >"$NODE_DIR/env" <<EOF
export KUBECONFIG=$NODE_DIR/admin.kubeconfig
export PATH=$node_bin:$k8s_bin:\$PATH
export CONTAINER_RUNTIME_ENDPOINT=unix://$sock
export NODE_DIR=$NODE_DIR NODE_NAME=$NODE_NAME NODE_IP=$NODE_IP NODE_API_IP=$NODE_API_IP
EOF
  export CONTAINER_RUNTIME_ENDPOINT=unix://$sock NODE_IP NODE_API_IP NODE_NAME NODE_DIR
  _nlog "node $NODE_NAME Ready ($(( ($(date +%s%N) - t0) / 1000000 )) ms after start)"
}

# Loads an image from buildah's storage into the node's runtime under the name a Pod will ask
# for. That name must be fully qualified (e.g. localhost/NAME:TAG, as buildah names local
# builds): the runtime would qualify a bare NAME:TAG with the default registry's name.
cluster_load_image() { # buildah-image pod-image-name
  local src=$1 want=$2 tar node_bin sock got
  node_bin=$(cat "$NODE_DIR/node_bin") sock=$NODE_DIR/containerd/containerd.sock
  case "${want%%/*}" in
    *.*|*:*|localhost) [[ "$want" == */* ]] || { _ndie "image name $want is not fully qualified"; return 1; } ;;
    *) _ndie "image name $want is not fully qualified (e.g. localhost/$want)"; return 1 ;;
  esac
  tar=$NODE_DIR/image.oci.tar
  rm -f "$tar"
  buildah --storage-driver vfs push -q "$src" "oci-archive:$tar:$want" >/dev/null || { _ndie "buildah push $src"; return 1; }
  "$node_bin/ctr" --address "$sock" -n k8s.io images import --snapshotter overlayfs --base-name "${want%:*}" "$tar" >/dev/null ||
    { _ndie "ctr images import"; return 1; }
  rm -f "$tar"
  got=$("$node_bin/ctr" --address "$sock" -n k8s.io images ls -q | grep -Fx "$want" || true)
  [ "$got" = "$want" ] || { _ndie "the runtime has no image $want after the import"; return 1; }
  echo "$want"
}

# --- Down ---------------------------------------------------------------------------------------
cluster_down() {
  local node_bin="" sock=$NODE_DIR/containerd/containerd.sock name pid c d
  [ -f "$NODE_DIR/node_bin" ] && node_bin=$(cat "$NODE_DIR/node_bin")
  local t0
  t0=$(date +%s%N)
  # This shell does the teardown: the watchdog has nothing to do (unless it is the caller).
  if [ -z "${NODE_FROM_WATCHDOG:-}" ] && [ -f "$NODE_DIR/watchdog.pid" ]; then
    _stop_group "$(cat "$NODE_DIR/watchdog.pid")" 1
    { exec 9>&-; } 2>/dev/null
  fi
  # The kubelet first (it would start the Pods again), then the CRI's sandboxes: stopping one
  # tears down its network (CNI DEL) and its netns.
  [ -f "$NODE_DIR/pids/kubelet" ] && _stop_group "$(cat "$NODE_DIR/pids/kubelet")" 15
  if [ -n "$node_bin" ] && [ -S "$sock" ] && kill -0 "$(cat "$NODE_DIR/pids/containerd" 2>/dev/null || echo 0)" 2>/dev/null; then
    local ids
    ids=$(timeout 30 "$node_bin/crictl" -r "unix://$sock" pods -q 2>/dev/null || true)
    if [ -n "$ids" ]; then
      # shellcheck disable=SC2086
      timeout 60 "$node_bin/crictl" -r "unix://$sock" -t 30s stopp $ids >/dev/null 2>&1
      # shellcheck disable=SC2086
      timeout 60 "$node_bin/crictl" -r "unix://$sock" -t 30s rmp -f $ids >/dev/null 2>&1
    fi
  fi
  # The daemons, in reverse start order (then anything with a pid file but not in the order).
  if [ -f "$NODE_DIR/pids/order" ]; then
    for name in $(tac "$NODE_DIR/pids/order"); do
      pid=$(cat "$NODE_DIR/pids/$name" 2>/dev/null) || continue
      _stop_group "$pid" 10
    done
  fi
  # Whatever still runs in the node's cgroups (containers a crashed runtime left) or runs this
  # node's shim (matched by its executable path and its containerd address).
  for c in pids memory; do
    [ -d "/sys/fs/cgroup/$c/$NODE_CGROUP" ] || continue
    find "/sys/fs/cgroup/$c/$NODE_CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u |
      while read -r pid; do kill -KILL "$pid" 2>/dev/null; done
  done
  if [ -n "$node_bin" ]; then
    for d in /proc/[0-9]*; do
      [ "$(readlink "$d/exe" 2>/dev/null)" = "$node_bin/containerd-shim-runc-v2" ] || continue
      tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -qF -- "$sock" && kill -KILL "${d#/proc/}" 2>/dev/null
    done
  fi
  sleep 0.3
  # Mounts under the state dir (snapshots, shm, netns, volumes), deepest first.
  findmnt -rn -o TARGET 2>/dev/null | awk -v p="$NODE_DIR/" 'index($0, p) == 1' | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  # cgroups, deepest first.
  for c in "${NODE_CONTROLLERS[@]}"; do
    [ -d "/sys/fs/cgroup/$c/$NODE_CGROUP" ] && find "/sys/fs/cgroup/$c/$NODE_CGROUP" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  # Links: pod veths go with their netns; the bridge and the Service address's veth.
  for l in $(ip -o link show master "$NODE_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$l" 2>/dev/null
  done
  ip link del "$NODE_BRIDGE" 2>/dev/null
  ip link del "$NODE_SVC_LINK" 2>/dev/null
  _fw_undo >/dev/null
  # libcni's result cache (fixed at /var/lib/cni in the CRI plugin).
  rm -f /var/lib/cni/results/"$NODE_CNI_NETWORK"-* 2>/dev/null
  if [ -f "$NODE_DIR/host-dirs" ]; then
    while read -r d; do
      [ -d "$d" ] && find "$d" -depth -type d -empty -delete 2>/dev/null
    done <"$NODE_DIR/host-dirs"
  fi
  if [ -n "${KEEP_LOGS:-}" ] && [ -d "$NODE_DIR/logs" ]; then
    mkdir -p "$KEEP_LOGS" && cp -r "$NODE_DIR/logs/." "$KEEP_LOGS/" 2>/dev/null
  fi
  local left
  left=$(cluster_leftovers)
  rm -rf "$NODE_DIR"
  if [ -n "$left" ]; then
    _nlog "teardown left these behind: $left"
    return 1
  fi
  _nlog "torn down in $(( ($(date +%s%N) - t0) / 1000000 )) ms; nothing left"
}

# What would show that a cluster is still there: processes started from its binaries or
# naming its state dir, its links, mounts and cgroups.
cluster_leftovers() {
  local out="" d exe cmd node_bin="" k8s_bin=""
  [ -f "$NODE_DIR/node_bin" ] && node_bin=$(cat "$NODE_DIR/node_bin")
  [ -f "$NODE_DIR/k8s_bin" ] && k8s_bin=$(cat "$NODE_DIR/k8s_bin")
  for d in /proc/[0-9]*; do
    [ "${d#/proc/}" = "$$" ] && continue
    exe=$(readlink "$d/exe" 2>/dev/null) || continue
    cmd=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null)
    case "$cmd" in *"cluster.sh down"*|*"watchdog $NODE_DIR/alive"*) continue ;; esac
    if { [ -n "$node_bin" ] && [[ "$exe" == "$node_bin"/* ]]; } ||
      { [ -n "$k8s_bin" ] && [[ "$exe" == "$k8s_bin"/* ]] && [[ "$cmd" == *"$NODE_DIR"* ]]; } ||
      [[ "$cmd" == *"$NODE_DIR/"* ]]; then
      out+=" pid ${d#/proc/} ($exe)"
    fi
  done
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && out+=" link $NODE_BRIDGE"
  ip link show "$NODE_SVC_LINK" >/dev/null 2>&1 && out+=" link $NODE_SVC_LINK"
  findmnt -rn -o TARGET 2>/dev/null | grep -q "^$NODE_DIR/" && out+=" mounts under $NODE_DIR"
  for c in "${NODE_CONTROLLERS[@]}"; do
    [ -d "/sys/fs/cgroup/$c/$NODE_CGROUP" ] && out+=" cgroup $c/$NODE_CGROUP"
  done
  echo "$out"
}

# --- CLI ----------------------------------------------------------------------------------------
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    up)
      trap 'cluster_down; exit 0' INT TERM
      trap 'cluster_down' EXIT
      cluster_up || exit 1
      echo "# cluster up; in another shell:"
      echo ". $NODE_DIR/env"
      echo "# Ctrl-C (or SIGTERM to $$) tears it down"
      # The sleep must not hold the watchdog's FIFO, and a SIGKILLed shell leaves it for 1 s at most.
      while :; do
        sleep 1 9>&- &
        wait $!
      done
      ;;
    run)
      shift
      [ "${1:-}" = -- ] && shift
      [ $# -gt 0 ] || { echo "usage: $0 run CMD..." >&2; exit 2; }
      trap 'exit 130' INT
      trap 'exit 143' TERM
      trap 'rc=$?; cluster_down; exit $rc' EXIT
      cluster_up || exit 1
      "$@" 9>&-
      ;;
    down)
      cluster_down
      ;;
    *)
      sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 2
      ;;
  esac
fi
