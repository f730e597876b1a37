#!/usr/bin/env bash
# Short fuzzing runs in CI: every cargo-fuzz target in fuzz/ runs for ROTA_FUZZ_SECONDS
# (default 5) from its committed seeds (fuzz/seeds/<target>). Prints executions per
# target; any crash, panic, leak of the limits (-rss_limit_mb, -malloc_limit_mb) or
# timeout fails the run and leaves the input in fuzz/artifacts/<target>/.
# CI builds without a sanitizer in the dev profile (overflow checks and debug
# assertions on; Rust's safety covers what ASan would). For long runs by hand, see the
# README ("Fuzzing"): release build with AddressSanitizer.
# Needs: cargo-fuzz (installed here if missing). The one stable toolchain builds it with
# RUSTC_BOOTSTRAP=1 (libFuzzer's -Z flags).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${ROTA_FUZZ_SECONDS:-5}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
cd fuzz
# `--prepare`: only cargo-fuzz and the crates (test.sh runs it while apt-get works).
if [[ ${1:-} == --prepare ]]; then
  cargo fetch --locked
  exit
fi
TD=target-ci
mapfile -t targets < <(cargo fuzz list)
cargo fuzz build --dev -s none --target-dir "$TD" >/dev/null
total=0
for t in "${targets[@]}"; do
  work=$(mktemp -d)
  cp seeds/"$t"/* "$work"/ 2>/dev/null || true
  log=$(mktemp)
  if ! cargo fuzz run --dev -s none --target-dir "$TD" "$t" "$work" -- \
      -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=1024 -malloc_limit_mb=512 \
      -timeout=10 -print_final_stats=1 > "$log" 2>&1; then
    tail -40 "$log"
    echo "ci-fuzz: $t FAILED (input in fuzz/artifacts/$t/)"
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  printf 'ci-fuzz: %-16s %10s executions in %ss, 0 crashes\n' "$t" "${runs:-?}" "$SECONDS_PER_TARGET"
  total=$((total + ${runs:-0}))
  rm -rf "$work" "$log"
done
echo "ci-fuzz: ${#targets[@]} targets, $total executions, 0 crashes"
# This build tree serves only these short runs; give its space back.
rm -rf "$TD"
