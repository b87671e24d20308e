#!/usr/bin/env bash
# Regenerates the wrapper Go modules that pin the node's binaries (run only when bumping
# versions.env or hack/envtest/versions.env; the generated go.mod/go.sum files are committed):
#
#   kubernetes/  kubelet and kube-scheduler of the control plane's release. Its own module, next to
#                hack/envtest/kubernetes (same staging replaces, read from the same release's
#                go.mod): the kubelet pulls dependencies (cAdvisor, the CRI client, ...) that the
#                apiserver's module does not list, and building it there would rewrite that go.sum.
#   containerd/  containerd, containerd-shim-runc-v2 and ctr
#   runc/        runc
#   cni/         the CNI plugins bridge, host-local, loopback and portmap
#   cri-tools/   crictl
#
# A wrapper module's requirements are the upstream module's own (a dependency's replace
# directives do not apply; none of the three runtime modules has any).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../envtest/versions.env
. "$here/../envtest/versions.env"
# shellcheck source=versions.env
. "$here/versions.env"
staging_version="v0.${KUBE_VERSION#1.}"

fresh() { # dir module-name
  mkdir -p "$1"
  rm -f "$1/go.mod" "$1/go.sum"
  (cd "$1" && go mod init "$2" >/dev/null 2>&1 && go mod edit -go=1.26.0)
}

gomod=$(go mod download -json "k8s.io/kubernetes@v${KUBE_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$gomod" ] || { echo "gen-modules: cannot find go.mod of k8s.io/kubernetes@v${KUBE_VERSION}" >&2; exit 1; }
fresh "$here/kubernetes" audience-operator/node/kubernetes
(
  cd "$here/kubernetes"
  awk '/^\t?k8s\.io\/[a-z0-9-]+ v0\.0\.0$/ {print $1} /^require k8s\.io\/[a-z0-9-]+ v0\.0\.0$/ {print $2}' "$gomod" |
    sort -u | while read -r m; do
      go mod edit -replace="$m=$m@$staging_version"
    done
  go get -tool "k8s.io/kubernetes/cmd/kubelet@v${KUBE_VERSION}"
  go get -tool "k8s.io/kubernetes/cmd/kube-scheduler@v${KUBE_VERSION}"
  go mod tidy
)

fresh "$here/containerd" audience-operator/node/containerd
(
  cd "$here/containerd"
  for cmd in containerd containerd-shim-runc-v2 ctr; do
    go get -tool "github.com/containerd/containerd/v2/cmd/$cmd@v${CONTAINERD_VERSION}"
  done
  go mod tidy
)

fresh "$here/runc" audience-operator/node/runc
(cd "$here/runc" && go get -tool "github.com/opencontainers/runc@v${RUNC_VERSION}" && go mod tidy)

fresh "$here/cni" audience-operator/node/cni
(
  cd "$here/cni"
  for p in main/bridge ipam/host-local main/loopback meta/portmap; do
    go get -tool "github.com/containernetworking/plugins/plugins/$p@v${CNI_PLUGINS_VERSION}"
  done
  go mod tidy
)
fresh "$here/cri-tools" audience-operator/node/cri-tools
(cd "$here/cri-tools" && go get -tool "sigs.k8s.io/cri-tools/cmd/crictl@v${CRI_TOOLS_VERSION}" && go mod tidy)
echo "gen-modules: wrote kubernetes/, containerd/, runc/, cni/ and cri-tools/ under $here"
