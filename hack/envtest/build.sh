#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl and etcd from the pinned wrapper modules
# into a version-keyed cache directory outside the repo, and prints that directory. The Makefile
# puts that directory first on PATH, so tests and the demo use the kubectl of the same release.
# Skips the build when the binaries already report the pinned versions.
#
#   hack/envtest/build.sh            build if needed, print the bin dir on stdout
#   ENVTEST_CACHE=/path ...          override the cache root (default ~/.cache/audience-operator/envtest)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache_root=${ENVTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/audience-operator/envtest}
bin="$cache_root/$KUBE_VERSION-etcd$ETCD_VERSION"
mkdir -p "$bin"

log() { echo "envtest-build: $*" >&2; }

# Version checks capture the whole output first: `cmd | grep -q` under pipefail fails at random
# when grep exits early and the writer gets SIGPIPE.
have_kube() {
  [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ] && [ -x "$bin/kubectl" ] || return 1
  local v
  v=$("$bin/kube-apiserver" --version 2>/dev/null) || return 1
  [ "$v" = "Kubernetes v$KUBE_VERSION" ]
}
have_etcd() {
  [ -x "$bin/etcd" ] || return 1
  local v
  v=$("$bin/etcd" --version 2>/dev/null) || return 1
  case "$v" in *"etcd Version: $ETCD_VERSION"*) return 0 ;; *) return 1 ;; esac
}

command -v go >/dev/null || { log "Go toolchain not found on PATH (needed to build the control plane)"; exit 1; }

if ! have_etcd; then
  log "building etcd v$ETCD_VERSION (cold build, a few minutes)"
  start=$(date +%s)
  (cd "$here/etcd" && CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "-s -w" \
    -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$bin/etcd.tmp" "$bin/etcd"
  log "etcd built in $(( $(date +%s) - start ))s"
fi

if ! have_kube; then
  log "building kube-apiserver, kube-controller-manager and kubectl v$KUBE_VERSION (cold build, about 10 minutes on 2 cores)"
  # shellcheck source=../lib/kube-ldflags.sh
  . "$here/../lib/kube-ldflags.sh"
  ld=$(kube_ldflags "$KUBE_VERSION")
  start=$(date +%s)
  for cmd in kube-apiserver kube-controller-manager kubectl; do
    (cd "$here/kubernetes" && CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "$ld" \
      -o "$bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
    mv "$bin/$cmd.tmp" "$bin/$cmd"
    log "$cmd built ($(( $(date +%s) - start ))s since start)"
  done
fi

have_kube && have_etcd || { log "built binaries do not report the pinned versions"; exit 1; }
echo "$bin"
