#!/usr/bin/env bash
# `make fuzz`: coverage-guided fuzzing (cargo-fuzz / libFuzzer) of the AEP client's response
# parsers and the emulator's request validation. Not part of `make test`.
#   FUZZ_SECONDS=300 FUZZ_TARGETS="client_responses emulator_requests" make fuzz
# FUZZ_SECONDS is per target (default 300); FUZZ_TARGETS defaults to every target in fuzz/.
# Needs the nightly toolchain; installs cargo-fuzz into ~/.cache/audience-operator/tools on first
# use. Seeds (fuzz/seeds/<target>/) are copied into the working corpus (fuzz/corpus/<target>/,
# kept between runs, not committed); crashing inputs land in fuzz/artifacts/<target>/.
# Prints one summary line per target and exits non-zero when a target crashed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

seconds=${FUZZ_SECONDS:-300}
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz: FUZZ_SECONDS must be a positive number of seconds, not '$seconds'" >&2
  exit 2
fi
toolchain=${FUZZ_TOOLCHAIN:-nightly}
tools="$HOME/.cache/audience-operator/tools"
export PATH="$tools/bin:$PATH"

# cargo-fuzz builds with -Z flags: it needs a nightly toolchain.
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "fuzz: installing the $toolchain toolchain" >&2
  if ! rustup toolchain install "$toolchain" --profile minimal; then
    echo "fuzz: the $toolchain Rust toolchain is missing and could not be installed" >&2
    exit 1
  fi
fi
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  echo "fuzz: installing cargo-fuzz into $tools (once)" >&2
  cargo install cargo-fuzz --locked --root "$tools"
fi

if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  mapfile -t targets < <(cargo "+$toolchain" fuzz list)
fi
if [ "${#targets[@]}" -eq 0 ]; then
  echo "fuzz: no fuzz targets selected" >&2
  exit 2
fi

# Build every selected target first (fuzz/target, not the main target dir), so a compile error
# shows before any time is spent fuzzing. Defaults of cargo-fuzz: release, debug assertions and
# overflow checks on, AddressSanitizer.
for t in "${targets[@]}"; do
  cargo "+$toolchain" fuzz build "$t"
done
triple=$(rustc "+$toolchain" -vV | sed -n 's/^host: //p')
bin_dir="$root/fuzz/target/$triple/release"

failed=()
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/$t"
  artifacts="fuzz/artifacts/$t"
  log="$artifacts/libfuzzer.log"
  mkdir -p "$corpus" "$artifacts"
  if [ -d "fuzz/seeds/$t" ]; then
    cp -R "fuzz/seeds/$t/." "$corpus/"
  fi
  echo "fuzz: $t for ${seconds}s (log: $log)" >&2
  start=$(date +%s)
  rc=0
  # One process, one worker: libFuzzer runs in-process unless -jobs/-workers are given.
  ASAN_OPTIONS="detect_odr_violation=0:${ASAN_OPTIONS:-}" "$bin_dir/$t" \
    -max_total_time="$seconds" \
    -print_final_stats=1 \
    -timeout=30 \
    -rss_limit_mb=4096 \
    -artifact_prefix="$artifacts/" \
    "$corpus" >"$log" 2>&1 || rc=$?
  elapsed=$(($(date +%s) - start))
  execs=$(awk '/^stat::number_of_executed_units:/ {n = $2} END {print n + 0}' "$log")
  rate=$(awk '/^stat::average_exec_per_sec:/ {n = $2} END {print n + 0}' "$log")
  if [ "$rc" -eq 0 ]; then
    result=ok
  else
    result="CRASHED (exit $rc)"
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    [ -n "$artifact" ] && result="$result: $artifact"
    failed+=("$t")
    echo "fuzz: $t crashed; end of $log:" >&2
    grep -v -E '^#[0-9]+' "$log" | tail -n 60 >&2 || true
  fi
  summary="fuzz: $t: ${elapsed}s, ${execs} execs, ${rate} exec/s, $result"
  echo "$summary"
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashed: ${failed[*]} (reproduce: cargo +$toolchain fuzz run <target> <artifact>)" >&2
  exit 1
fi
