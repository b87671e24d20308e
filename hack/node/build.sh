#!/usr/bin/env bash
# Builds, once, the node side of the single-node cluster (hack/node/cluster.sh) from the pinned
# wrapper modules (gen-modules.sh) into a version-keyed cache directory outside the repo, and
# prints that directory:
#
#   kubelet, kube-scheduler          k8s.io/kubernetes (hack/envtest/versions.env), the same -X
#                                    version flags as hack/envtest/build.sh; CGO off (upstream
#                                    links the kubelet with cgo, but nothing it needs here uses it)
#   containerd, containerd-shim-runc-v2, ctr
#                                    CGO off, so without the btrfs snapshotter (cgo only); the shim
#                                    without gRPC, as upstream's Makefile builds it
#   runc                             cgo (nsenter is C); with seccomp when libseccomp-dev is
#                                    installed or installable by apt-get, else without (and said so)
#   cni/{bridge,host-local,loopback,portmap}
#   crictl
#   pause-<tag>.oci.tar              the pod sandbox image: k8s.io/kubernetes' build/pause/linux/pause.c
#                                    compiled static (as upstream's build/pause does), as an OCI
#                                    archive named localhost/audience-operator-node/pause:<tag>
#
# Skips what is present and reports the pinned version.
#
#   hack/node/build.sh               build if needed, print the directory on stdout
#   NODE_CACHE=/path ...             override the cache root (default ~/.cache/audience-operator/node)
#   RUNC_SECCOMP=0                   build runc without seccomp even when libseccomp-dev is there
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../envtest/versions.env
. "$here/../envtest/versions.env"
# shellcheck source=versions.env
. "$here/versions.env"

cache_root=${NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/audience-operator/node}
bin="$cache_root/k$KUBE_VERSION-containerd$CONTAINERD_VERSION-runc$RUNC_VERSION-cni$CNI_PLUGINS_VERSION-crictl$CRI_TOOLS_VERSION"
mkdir -p "$bin/cni"

log() { echo "node-build: $*" >&2; }
die() { log "$*"; exit 1; }
# Version checks capture the whole output first (see hack/envtest/build.sh: no `| grep -q`).
out() { "$@" 2>&1 || true; }

have_kube() {
  local c v
  for c in kubelet kube-scheduler; do
    [ -x "$bin/$c" ] || return 1
    v=$(out "$bin/$c" --version)
    [ "$v" = "Kubernetes v$KUBE_VERSION" ] || return 1
  done
}
have_containerd() {
  local v
  [ -x "$bin/containerd" ] && [ -x "$bin/containerd-shim-runc-v2" ] && [ -x "$bin/ctr" ] || return 1
  v=$(out "$bin/containerd" --version)
  case "$v" in *" v$CONTAINERD_VERSION"*) ;; *) return 1 ;; esac
  v=$(out "$bin/ctr" --version)
  case "$v" in *" v$CONTAINERD_VERSION"*) ;; *) return 1 ;; esac
  v=$(out "$bin/containerd-shim-runc-v2" -v)
  case "$v" in *"v$CONTAINERD_VERSION"*) ;; *) return 1 ;; esac
}
have_runc() { # [seccomp]
  local v
  [ -x "$bin/runc" ] || return 1
  v=$(out "$bin/runc" --version)
  case "$v" in "runc version $RUNC_VERSION"*) ;; *) return 1 ;; esac
  if [ "${1:-}" = seccomp ]; then
    case "$v" in *"libseccomp: "*) ;; *) return 1 ;; esac
  fi
}
have_cni() {
  local p v
  for p in bridge host-local loopback portmap; do
    [ -x "$bin/cni/$p" ] || return 1
    v=$(out env -i "$bin/cni/$p")
    case "$v" in *"plugin v$CNI_PLUGINS_VERSION"*) ;; *) return 1 ;; esac
  done
}

have_crictl() {
  local v
  [ -x "$bin/crictl" ] || return 1
  v=$(out "$bin/crictl" --version)
  [ "$v" = "crictl version v$CRI_TOOLS_VERSION" ]
}

command -v go >/dev/null || die "Go toolchain not found on PATH (needed to build the node)"

# go build into a temporary name, then rename: an interrupted build never leaves a binary that
# looks complete.
gobuild() { # module-dir output package [go build flags...]
  local dir=$1 o=$2 pkg=$3
  shift 3
  (cd "$here/$dir" && go build -mod=mod -trimpath "$@" -o "$o.tmp" "$pkg")
  mv "$o.tmp" "$o"
}

if ! have_kube; then
  log "building kubelet and kube-scheduler v$KUBE_VERSION (cold build, several minutes on 2 cores)"
  # shellcheck source=../lib/kube-ldflags.sh
  . "$here/../lib/kube-ldflags.sh"
  ld=$(kube_ldflags "$KUBE_VERSION")
  start=$(date +%s)
  for cmd in kubelet kube-scheduler; do
    CGO_ENABLED=0 gobuild kubernetes "$bin/$cmd" "k8s.io/kubernetes/cmd/$cmd" -tags selinux,notest -ldflags "$ld"
    log "$cmd built ($(( $(date +%s) - start ))s since start)"
  done
fi

if ! have_containerd; then
  log "building containerd, containerd-shim-runc-v2 and ctr v$CONTAINERD_VERSION"
  pkg=github.com/containerd/containerd/v2
  ld="-s -w -X $pkg/version.Version=v$CONTAINERD_VERSION -X $pkg/version.Package=$pkg"
  start=$(date +%s)
  CGO_ENABLED=0 gobuild containerd "$bin/containerd" "$pkg/cmd/containerd" -tags urfave_cli_no_docs -ldflags "$ld"
  CGO_ENABLED=0 gobuild containerd "$bin/containerd-shim-runc-v2" "$pkg/cmd/containerd-shim-runc-v2" \
    -tags "urfave_cli_no_docs no_grpc" -ldflags "$ld"
  CGO_ENABLED=0 gobuild containerd "$bin/ctr" "$pkg/cmd/ctr" -tags urfave_cli_no_docs -ldflags "$ld"
  log "containerd built in $(( $(date +%s) - start ))s"
fi

# runc: seccomp needs libseccomp's headers (Debian's libseccomp-dev) at build time.
seccomp=""
if [ "${RUNC_SECCOMP:-1}" = 1 ]; then
  if ! pkg-config --exists libseccomp 2>/dev/null && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q libseccomp-dev >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libseccomp-dev >/dev/null 2>&1; } || true
  fi
  pkg-config --exists libseccomp 2>/dev/null && seccomp=seccomp
fi
if ! have_runc $seccomp; then
  if [ -n "$seccomp" ]; then
    log "building runc v$RUNC_VERSION with seccomp"
  else
    log "building runc v$RUNC_VERSION WITHOUT seccomp (no libseccomp-dev): seccompProfile RuntimeDefault is not enforced"
  fi
  command -v gcc >/dev/null || die "runc needs a C compiler (gcc) for its nsenter part"
  start=$(date +%s)
  # Upstream's default tags less libpathrs (a Rust library not packaged here; runc then uses its
  # built-in Go path resolution).
  CGO_ENABLED=1 gobuild runc "$bin/runc" github.com/opencontainers/runc -buildmode=pie \
    -tags "$seccomp urfave_cli_no_docs" -ldflags "-s -w -X main.gitCommit=v$RUNC_VERSION"
  log "runc built in $(( $(date +%s) - start ))s"
fi

if ! have_cni; then
  log "building the CNI plugins v$CNI_PLUGINS_VERSION"
  start=$(date +%s)
  for p in main/bridge ipam/host-local main/loopback meta/portmap; do
    CGO_ENABLED=0 gobuild cni "$bin/cni/${p#*/}" "github.com/containernetworking/plugins/plugins/$p" \
      -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=v$CNI_PLUGINS_VERSION"
  done
  log "CNI plugins built in $(( $(date +%s) - start ))s"
fi

if ! have_crictl; then
  log "building crictl v$CRI_TOOLS_VERSION"
  CGO_ENABLED=0 gobuild cri-tools "$bin/crictl" sigs.k8s.io/cri-tools/cmd/crictl \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=v$CRI_TOOLS_VERSION"
fi

# The pause image (no registry to pull it from). Its tag is upstream's for this release.
src=$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[ -f "$src/build/pause/linux/pause.c" ] || die "no build/pause/linux/pause.c in k8s.io/kubernetes@v$KUBE_VERSION"
pause_tag=$(sed -n 's/^TAG ?= //p' "$src/build/pause/Makefile")
[ -n "$pause_tag" ] || die "no TAG in build/pause/Makefile"
if [ ! -s "$bin/pause-$pause_tag.oci.tar" ]; then
  log "building the pause image $pause_tag"
  gcc -Os -Wall -Werror -static -DVERSION="v$pause_tag" -o "$bin/pause" "$src/build/pause/linux/pause.c"
  python3 "$here/oci-archive.py" "$bin/pause" "localhost/audience-operator-node/pause:$pause_tag" "$bin/pause-$pause_tag.oci.tar.tmp"
  mv "$bin/pause-$pause_tag.oci.tar.tmp" "$bin/pause-$pause_tag.oci.tar"
fi

have_kube && have_containerd && have_runc $seccomp && have_cni && have_crictl ||
  die "built binaries do not report the pinned versions (see $bin)"
echo "$bin"
