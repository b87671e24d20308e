#!/usr/bin/env bash
# Builds the kstatus helper (main.go: prints sigs.k8s.io/cli-utils kstatus verdicts of objects
# given as JSON) from the pinned module in this directory into a version-keyed cache outside the
# repo, and prints the binary's path. Skips the build when that binary is already there and runs.
# After editing main.go, delete the cached binary (or set KSTATUS_CACHE) to rebuild.
#
#   hack/kstatus/build.sh            build if needed, print the binary path on stdout
#   KSTATUS_CACHE=/path ...          override the cache dir (default ~/.cache/audience-operator/tools)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

log() { echo "kstatus-build: $*" >&2; }

# The cli-utils version pinned in go.mod names the binary.
version=$(awk '$1 == "sigs.k8s.io/cli-utils" { print $2 } $2 == "sigs.k8s.io/cli-utils" { print $3 }' "$here/go.mod" | head -n 1)
[ -n "$version" ] || { log "sigs.k8s.io/cli-utils is not required in $here/go.mod"; exit 1; }

dir=${KSTATUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/audience-operator/tools}
bin="$dir/kstatus-$version"
mkdir -p "$dir"

# A usable binary answers an empty list with nothing and exit 0.
works() {
  [ -x "$bin" ] || return 1
  local out
  out=$(echo '[]' | "$bin" 2>/dev/null) || return 1
  [ -z "$out" ]
}

if ! works; then
  command -v go >/dev/null || { log "Go toolchain not found on PATH (needed to build the kstatus helper)"; exit 1; }
  log "building kstatus helper with sigs.k8s.io/cli-utils $version"
  start=$(date +%s)
  tmp=$(mktemp "$dir/.kstatus-$version.XXXXXX")
  trap 'rm -f "$tmp"' EXIT
  (cd "$here" && CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "-s -w" -o "$tmp" .)
  mv "$tmp" "$bin"
  log "built in $(( $(date +%s) - start ))s"
  works || { log "the built binary does not run"; exit 1; }
fi
echo "$bin"
