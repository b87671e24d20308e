#!/usr/bin/env bash
# Makes sure the Lua 5.4 interpreter that evaluates deploy/argocd/health.lua in the tests is
# installed (Debian package lua5.4), and prints its path. Runs `apt-get update` only when the
# install fails with the package lists as they are.
#
#   hack/argocd-health/install-lua.sh    install if needed, print the interpreter path on stdout
set -euo pipefail

log() { echo "argocd-health: $*" >&2; }

if ! command -v lua5.4 >/dev/null; then
  command -v apt-get >/dev/null || { log "lua5.4 not found and no apt-get here: install Lua 5.4 (lua5.4 on PATH)"; exit 1; }
  sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { log "lua5.4 not found; installing it needs root (apt-get install lua5.4)"; exit 1; }
    sudo=(sudo)
  fi
  apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -y -q)
  log "installing lua5.4"
  if ! "${apt[@]}" install lua5.4 >&2; then
    log "lua5.4 not installable with the current package lists; running apt-get update"
    "${apt[@]}" update >&2
    "${apt[@]}" install lua5.4 >&2
  fi
fi
command -v lua5.4
