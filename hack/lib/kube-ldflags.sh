# shellcheck shell=bash
# kube_ldflags VERSION: the linker flags that stamp a Kubernetes binary built from the module
# with its release version (what `--version` reports), stripped. Sourced by the build scripts.
kube_ldflags() {
  local version=$1 minor ld="-s -w" pkg
  minor=${version#*.}
  minor=${minor%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $pkg.gitVersion=v$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  echo "$ld"
}
