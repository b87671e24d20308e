#!/usr/bin/env bash
# Builds Helm from its pinned Go module into a version-keyed cache outside the repo, and prints
# the binary's path. Skips the build when that binary is already there and runs.
#
#   hack/helm/build.sh            build if needed, print the binary path on stdout
#   HELM_CACHE=/path ...          override the cache dir (default ~/.cache/audience-operator/tools)
set -euo pipefail

# The pinned Helm release (its module: helm.sh/helm/v4).
version=v4.3.2

log() { echo "helm-build: $*" >&2; }

dir=${HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/audience-operator/tools}
bin="$dir/helm-$version"
mkdir -p "$dir"

works() { [ -x "$bin" ] && "$bin" version --short >/dev/null 2>&1; }

if ! works; then
  command -v go >/dev/null || { log "Go toolchain not found on PATH (needed to build Helm)"; exit 1; }
  log "building Helm $version from helm.sh/helm/v4 (a few minutes, once)"
  start=$(date +%s)
  tmp=$(mktemp -d "$dir/.helm-$version.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "helm.sh/helm/v4/cmd/helm@$version"
  mv "$tmp/helm" "$bin"
  log "built in $(( $(date +%s) - start ))s"
  works || { log "the built binary does not run"; exit 1; }
fi
echo "$bin"
