#!/usr/bin/env bash
# The whole test suite: installs the tools, checks formatting and lints, runs every test
# (unit, integration with real dbus-daemon / fw_printenv / U-Boot under QEMU / openssl /
# rauc / nginx / imgtool / smpclient), the ARM builds and qemu-user runs, and the
# packaging, fuzzing and other checks in scripts/ci-*.sh.
#
# Time on 2 cores matters (CI allows 20 minutes): the host tests run under cargo-nextest
# (.config/nextest.toml: every test binary side by side, since most tests wait on a
# service), and once they are built, the ARM part (scripts/ci-arm.sh: cross builds, then
# tests under qemu-user) runs at lower priority beside them.
# ROTA_CI_ARM=0 skips the ARM part.
# Last, scripts/ci-vm.sh runs the journeys on an emulated ARM64 gateway (real U-Boot,
# kernel, systemd and partitions under qemu-system-aarch64) with the ARM part's aarch64
# release binary. ROTA_CI_VM=0 skips it (so does ROTA_CI_ARM=0: it needs that binary).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
stage() { echo "== [$((SECONDS - start))s] $* (disk free: $(df -h --output=avail . | tail -1 | tr -d ' '))"; }

# Disk is not a given on CI machines: no incremental caches and no debug info (a failed
# assertion still names its file and line); this keeps a whole run — host, ARM and fuzz
# builds — to a few GiB instead of over ten, and links faster.
export CARGO_INCREMENTAL=0
export CARGO_PROFILE_DEV_DEBUG=0

stage "setup"
# While apt-get and pip wait on the network, fetch and build what later stages need:
# cargo-fuzz, the ARM standard libraries, every crate. Best effort: each later stage
# installs or fetches again what this did not get.
mkdir -p target
(
  set +e
  cargo fetch --locked
  [[ "${ROTA_CI_ARM:-1}" == 0 ]] || bash scripts/ci-arm.sh --prepare
  bash scripts/ci-fuzz.sh --prepare
) > target/prefetch.log 2>&1 &
prefetch_pid=$!
bash scripts/setup-deps.sh
wait "$prefetch_pid" || true
export PATH="$PWD/.venv/bin:$PATH"

stage "fmt, clippy"
cargo fmt --check
cargo clippy --all-targets --features failpoints -- -D warnings
# the device build (no zstd encoder, as the Yocto recipe and scripts/ci-arm.sh build it)
cargo clippy --lib --bins --no-default-features -- -D warnings
stage "host test build"
# The power-cut campaign arms crash points: only a build with the feature has them.
cargo nextest run --features failpoints --lib --bins --tests --examples --no-run

arm_pid=
mkdir -p target
if [[ "${ROTA_CI_ARM:-1}" != 0 ]]; then
  stage "scripts/ci-arm.sh started in the background (log: target/ci-arm.log)"
  # Its own target dir: cargo holds the build-dir lock while the host tests run.
  CARGO_TARGET_DIR=target/arm setsid nice -n 10 bash scripts/ci-arm.sh > target/ci-arm.log 2>&1 &
  arm_pid=$!
  # If anything below fails, the ARM job (its own process group) goes too.
  trap 'kill -- -"$arm_pid" 2>/dev/null || true' EXIT
fi

stage "host tests"
cargo nextest run --features failpoints --lib --bins --tests --examples 2>&1 | tee target/test-host.log

stage "a build without the failpoints feature has no crash points"
# As shipped: nothing in the binary reads ROTA_FAILPOINT (the test build above does).
cargo build --locked --bin rota
if grep -q ROTA_FAILPOINT target/debug/rota; then
  echo "target/debug/rota built without --features failpoints still reads ROTA_FAILPOINT"
  exit 1
fi

for extra in scripts/ci-*.sh; do
  # ci-arm.sh runs in the background (above), ci-vm.sh after it (below).
  [[ -e "$extra" && "$extra" != scripts/ci-arm.sh && "$extra" != scripts/ci-vm.sh ]] || continue
  stage "$extra"
  bash "$extra"
done

if [[ -n $arm_pid ]]; then
  stage "waiting for scripts/ci-arm.sh"
  rc=0; wait "$arm_pid" || rc=$?
  trap - EXIT
  cat target/ci-arm.log | grep -v '^\s*\(Compiling\|Downloaded\|Downloading\|Executable\)' || true
  ((rc == 0)) || { echo "scripts/ci-arm.sh failed ($rc)"; exit "$rc"; }
  if [[ "${ROTA_CI_VM:-1}" != 0 ]]; then
    stage "scripts/ci-vm.sh (emulated ARM64 gateway journeys)"
    bash scripts/ci-vm.sh
  fi
fi
stage "all green"
