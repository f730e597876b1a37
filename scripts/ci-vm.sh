#!/usr/bin/env bash
# The emulated-gateway stage of CI (scripts/test.sh runs it after the ARM part, whose
# aarch64 release binary it installs): the journeys of tests/gateway_vm.rs on an
# emulated ARM64 gateway made by scripts/gateway-vm.sh — Debian's U-Boot, kernel and
# systemd under qemu-system-aarch64 (TCG), rota as shipped.
#
#   bash scripts/ci-vm.sh              # prepare the images, run every journey
#   bash scripts/ci-vm.sh --prepare    # only the images, bundles and keys
#   ROTA_VM_ONLY=FILTER bash scripts/ci-vm.sh   # only the journeys whose name matches
#
# Inputs: the aarch64 release binary ($ROTA_VM_ROTA, default
# target/arm/aarch64-unknown-linux-gnu/release/rota, where scripts/ci-arm.sh builds it
# under test.sh), the host's rota CLI for keys and bundles (target/debug/rota, built if
# missing), the cached Debian root file system (scripts/gateway-vm-rootfs.sh: ~3-5 min
# when its recipe changed, instant otherwise). Output: $ROTA_VM_DIR (default target/vm),
# the timing of each boot and journey in $ROTA_VM_DIR/timings.txt (printed at the end),
# the console log of a failed journey in $ROTA_VM_DIR/failed-<journey>-console.log.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
TD=${CARGO_TARGET_DIR:-target}
ARM_BIN=${ROTA_VM_ROTA:-target/arm/aarch64-unknown-linux-gnu/release/rota}
VM_DIR=${ROTA_VM_DIR:-$TD/vm}
phase() { echo "ci-vm: [$((SECONDS - start))s] $*"; }
fail() { echo "ci-vm: $*" >&2; exit 1; }

[[ -f $ARM_BIN ]] || fail "no aarch64 release binary at $ARM_BIN: run scripts/ci-arm.sh (CARGO_TARGET_DIR=target/arm) first, or set ROTA_VM_ROTA"
for c in qemu-system-aarch64 mkimage mkenvimage sfdisk mkfs.vfat mcopy debugfs fw_printenv nginx mmdebstrap arch-test; do
  command -v "$c" >/dev/null || fail "$c is missing: bash scripts/setup-deps.sh"
done
host_rota=$TD/debug/rota
if [[ ! -x $host_rota ]]; then
  phase "cargo build --bin rota (the host CLI makes keys and bundles)"
  cargo build --locked --bin rota
fi
export ROTA_HOST=$PWD/$host_rota
[[ $host_rota == /* ]] && export ROTA_HOST=$host_rota

phase "images: scripts/gateway-vm.sh prepare $VM_DIR"
bash scripts/gateway-vm.sh prepare "$VM_DIR" --rota "$ARM_BIN" --attempts 2
[[ ${1:-} == --prepare ]] && { phase "prepared"; exit 0; }

phase "journeys: tests/gateway_vm.rs"
filter=()
[[ -n ${ROTA_VM_ONLY:-} ]] && filter=(-E "test(/${ROTA_VM_ONLY}/)")
rc=0
ROTA_VM_TESTS=1 ROTA_VM_DIR=$(cd "$VM_DIR" && pwd) cargo nextest run --locked --features failpoints \
  --profile vm --no-fail-fast --test gateway_vm "${filter[@]}" || rc=$?
echo "---- timings ($VM_DIR/timings.txt)"
cat "$VM_DIR/timings.txt" 2>/dev/null || true
# The images are large; the failed journeys' console logs stay.
rm -rf "$VM_DIR/imx" "$VM_DIR/rpi" "$VM_DIR/www"
((rc == 0)) || fail "journeys failed (console logs: $VM_DIR/failed-*-console.log)"
phase "OK ($((SECONDS - start))s)"
