#!/usr/bin/env bash
# Regenerates the two wrapper Go modules that pin kube-apiserver/kube-controller-manager and etcd.
#
# k8s.io/kubernetes requires its staging modules at the placeholder version v0.0.0, so the wrapper
# module maps each of them to the matching v0.<minor>.<patch> release. The list is read from the
# downloaded go.mod of the pinned release, never maintained by hand.
# Run this only when bumping versions.env; the generated go.mod/go.sum files are committed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
staging_version="v0.${KUBE_VERSION#1.}"

gomod=$(go mod download -json "k8s.io/kubernetes@v${KUBE_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$gomod" ] || { echo "gen-modules: cannot find go.mod of k8s.io/kubernetes@v${KUBE_VERSION}" >&2; exit 1; }

kube="$here/kubernetes"
mkdir -p "$kube"
rm -f "$kube/go.mod" "$kube/go.sum"
(
  cd "$kube"
  go mod init audience-operator/envtest/kubernetes >/dev/null 2>&1
  go mod edit -go=1.26.0
  awk '/^\t?k8s\.io\/[a-z0-9-]+ v0\.0\.0$/ {print $1} /^require k8s\.io\/[a-z0-9-]+ v0\.0\.0$/ {print $2}' "$gomod" |
    sort -u | while read -r m; do
      go mod edit -replace="$m=$m@$staging_version"
    done
  go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@v${KUBE_VERSION}"
  go get -tool "k8s.io/kubernetes/cmd/kube-controller-manager@v${KUBE_VERSION}"
  go get -tool "k8s.io/kubernetes/cmd/kubectl@v${KUBE_VERSION}"
  go mod tidy
)

etcd="$here/etcd"
mkdir -p "$etcd"
rm -f "$etcd/go.mod" "$etcd/go.sum"
(
  cd "$etcd"
  go mod init audience-operator/envtest/etcd >/dev/null 2>&1
  go mod edit -go=1.26.0
  go get -tool "go.etcd.io/etcd/server/v3@v${ETCD_VERSION}"
  go mod tidy
)
echo "gen-modules: wrote $kube/go.mod ($(grep -c '=> k8s.io' "$kube/go.mod") staging replaces) and $etcd/go.mod"
