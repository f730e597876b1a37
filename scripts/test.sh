#!/usr/bin/env bash
# The whole test suite: installs the tools, checks formatting and lints, runs every test
# (unit, integration with real dbus-daemon / fw_printenv / U-Boot under QEMU / openssl /
# rauc / nginx / imgtool / smpclient), then the ARM runs under qemu-user and the
# packaging checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
export PATH="$PWD/.venv/bin:$PATH"

cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets 2>&1 | tee target/test-host.log
for extra in scripts/ci-*.sh; do
  [[ -e "$extra" ]] || continue
  echo "== $extra"
  bash "$extra"
done
