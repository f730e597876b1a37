#!/usr/bin/env bash
# The whole rota journey on a simulated gateway, on this machine:
# file-backed A/B slots, a file-backed U-Boot env (made by mkenvimage, read by
# fw_printenv), a private D-Bus system bus, keys, a signed bundle, an install with live
# progress, a boot of the new slot (what boot.cmd does, applied to the env; the real
# U-Boot runs it in tests/uboot_boot.rs), mark good, status.
# Everything lives in ./sim (removed and made anew on each run), made and run by
# scripts/sim-gateway.sh — the same gateway the tests use.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QEMU=1
[[ "${1:-}" == "--no-qemu" ]] && QEMU=0

# --vm: the same journey on an emulated ARM64 gateway instead (scripts/gateway-vm.sh):
# Debian's U-Boot, kernel and systemd under qemu-system-aarch64, rota as shipped, the
# serial console streamed here. ~10 min with a cached aarch64 build and root file system;
# the first run cross-builds rota for aarch64 (~20 min on 2 cores) and builds the
# Debian root file system (~3-5 min).
if [[ "${1:-}" == "--vm" ]]; then
  bash scripts/setup-deps.sh
  bash scripts/ci-arm.sh --prepare
  echo "== building rota: aarch64 release for the gateway, the host CLI for keys and bundles"
  CARGO_TARGET_DIR=target/arm cargo build --release --locked --quiet --target aarch64-unknown-linux-gnu --bin rota
  cargo build --locked --quiet --bin rota
  echo "== the emulated gateway: images, keys, bundles (scripts/gateway-vm.sh prepare)"
  bash scripts/ci-vm.sh --prepare
  echo "== the journey (tests/gateway_vm.rs): factory boot of A, install over HTTP, reboot into B, mark good"
  ROTA_VM_TESTS=1 ROTA_VM_CONSOLE=1 cargo nextest run --locked --features failpoints --profile vm \
    --no-capture --test gateway_vm -E 'test(/^imx_env_factory/)'
  exit
fi

bash scripts/setup-deps.sh
echo "== building rota (release)"
cargo build --release --quiet
export ROTA=$ROOT/target/release/rota
SIM=$ROOT/sim
GW="bash $ROOT/scripts/sim-gateway.sh"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() { [[ -d $SIM ]] && $GW stop "$SIM" || true; }
trap cleanup EXIT
cleanup
rm -rf "$SIM"

step "a simulated gateway in $SIM: slots A (booted) and B, U-Boot env, kernel command line, keys"
$GW create "$SIM" --slot-size $((64 << 20)) --dbus 'rauc-compat = true'
cd "$SIM"
mkdir -p bundle-src rootfs-1.0/etc && echo "VERSION=1.0.0" > rootfs-1.0/etc/os-release
mkfs.ext4 -q -F -d rootfs-1.0 a.img 64M
fw_printenv -c fw_env.config | grep BOOT_
cat system.toml
eval "$($GW env "$SIM")"

step "a private D-Bus system bus and the rota service"
$GW start "$SIM"
"$ROTA" status

step "release 1.1.0: an ext4 rootfs image, signed into a bundle"
mkdir -p rootfs-1.1/etc && echo "VERSION=1.1.0" > rootfs-1.1/etc/os-release
head -c 8M /dev/urandom > rootfs-1.1/etc/firmware.bin
mkfs.ext4 -q -F -d rootfs-1.1 bundle-src/rootfs.ext4 48M
cat > bundle-src/manifest.toml <<TOML
[update]
compatible = "acme-gateway"
version = "1.1.0"
description = "demo release"

[[image]]
slot-class = "rootfs"
file = "rootfs.ext4"
TOML
"$ROTA" bundle create bundle-src update-1.1.0.rota --key keys/release.key.pem
tar tvf update-1.1.0.rota
"$ROTA" bundle verify update-1.1.0.rota --keyring keys/release.pub.pem
mkdir -p sigcheck && tar xf update-1.1.0.rota -C sigcheck manifest.toml manifest.toml.sig
openssl pkeyutl -verify -pubin -inkey keys/release.pub.pem -rawin \
  -in sigcheck/manifest.toml -sigfile sigcheck/manifest.toml.sig

step "install over D-Bus (rota install → io.rota.Agent1.Install)"
"$ROTA" install "$SIM/update-1.1.0.rota"
fw_printenv -c fw_env.config | grep BOOT_
cmp -n "$(stat -c %s bundle-src/rootfs.ext4)" bundle-src/rootfs.ext4 b.img && echo "slot B holds the new image"

step "reboot: the bootloader picks the new slot"
$GW stop-service "$SIM"
if [[ $QEMU == 1 ]] && [[ -x $ROOT/scripts/uboot-boot.sh ]]; then
  slot=$(bash "$ROOT/scripts/uboot-boot.sh" "$SIM/uboot.env")
else
  # What boot.cmd does: first slot in BOOT_ORDER with attempts left, decrement, boot it.
  slot=B; fw_setenv -c fw_env.config BOOT_B_LEFT 2
fi
echo "bootloader booted slot $slot"
echo "console=ttyAMA0 root=/dev/mmcblk0p3 rota.slot=$slot" > cmdline
fw_printenv -c fw_env.config | grep BOOT_
$GW start-service "$SIM"
"$ROTA" status

step "the system is up: mark the booted slot good (what rota-mark-good.service does)"
"$ROTA" mark good booted
"$ROTA" status --json
echo
step "the same through Debian's rauc CLI (RAUC-compatible D-Bus API)"
rauc status --output-format=json-pretty 2>/dev/null || rauc status
