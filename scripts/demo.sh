#!/usr/bin/env bash
# The whole rota journey on a simulated gateway, on this machine:
# file-backed A/B slots, a file-backed U-Boot env (made by mkenvimage, read by
# fw_printenv), a private D-Bus system bus, keys, a signed bundle, an install with live
# progress, a boot of the new slot (what boot.cmd does, applied to the env; the real
# U-Boot runs it in tests/uboot_boot.rs), mark good, status.
# Everything lives in ./sim (removed and made anew on each run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QEMU=1
[[ "${1:-}" == "--no-qemu" ]] && QEMU=0

bash scripts/setup-deps.sh
echo "== building rota (release)"
cargo build --release --quiet
ROTA=$ROOT/target/release/rota
SIM=$ROOT/sim
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  [[ -f $SIM/service.pid ]] && kill "$(cat "$SIM/service.pid")" 2>/dev/null || true
  [[ -f $SIM/dbus.pid ]] && kill "$(cat "$SIM/dbus.pid")" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
rm -rf "$SIM"; mkdir -p "$SIM"/{keys,data,bundle-src}
cd "$SIM"

step "a simulated gateway in $SIM: slots A (booted) and B, U-Boot env, kernel command line"
truncate -s 64M slot-a.img slot-b.img
mkdir -p rootfs-1.0/etc && echo "VERSION=1.0.0" > rootfs-1.0/etc/os-release
mkfs.ext4 -q -F -d rootfs-1.0 slot-a.img 64M
printf 'bootcmd=run distro_bootcmd\nBOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\nserial=GW-0042\n' > env.txt
mkenvimage -s 0x4000 -o uboot.env env.txt
echo "$SIM/uboot.env 0x0 0x4000" > fw_env.config
echo "console=ttyAMA0 root=/dev/mmcblk0p2 rota.slot=A" > cmdline
fw_printenv -c fw_env.config | grep BOOT_

"$ROTA" keygen --out-dir keys --name release
cat > system.toml <<TOML
[system]
compatible = "acme-gateway"
data-dir = "$SIM/data"
kernel-cmdline = "$SIM/cmdline"
boot-attempts = 3

[keyring]
paths = ["$SIM/keys/release.pub.pem"]

[bootloader]
type = "uboot"
fw-env-config = "$SIM/fw_env.config"

[slot.rootfs.0]
device = "$SIM/slot-a.img"
bootname = "A"

[slot.rootfs.1]
device = "$SIM/slot-b.img"
bootname = "B"

[dbus]
rauc-compat = true
TOML
export ROTA_CONFIG=$SIM/system.toml

step "a private D-Bus system bus and the rota service"
cat > bus.conf <<XML
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$SIM/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
XML
dbus-daemon --config-file=bus.conf --fork --print-address=1 --print-pid=3 3>dbus.pid >/dev/null
export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$SIM/system_bus_socket
start_service() {
  "$ROTA" service >>service.log 2>&1 &
  echo $! > service.pid
  for _ in $(seq 100); do busctl --system status io.rota >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "rota service did not come up:"; cat service.log; exit 1
}
start_service
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
cmp -n "$(stat -c %s bundle-src/rootfs.ext4)" bundle-src/rootfs.ext4 slot-b.img && echo "slot B holds the new image"

step "reboot: the bootloader picks the new slot"
kill "$(cat service.pid)"; wait "$(cat service.pid)" 2>/dev/null || true
if [[ $QEMU == 1 ]] && [[ -x $ROOT/scripts/uboot-boot.sh ]]; then
  slot=$(bash "$ROOT/scripts/uboot-boot.sh" "$SIM/uboot.env")
else
  # What boot.cmd does: first slot in BOOT_ORDER with attempts left, decrement, boot it.
  slot=B; fw_setenv -c fw_env.config BOOT_B_LEFT 2
fi
echo "bootloader booted slot $slot"
echo "console=ttyAMA0 root=/dev/mmcblk0p3 rota.slot=$slot" > cmdline
fw_printenv -c fw_env.config | grep BOOT_
start_service
"$ROTA" status

step "the system is up: mark the booted slot good (what rota-mark-good.service does)"
"$ROTA" mark good booted
"$ROTA" status --json
echo
step "the same through Debian's rauc CLI (RAUC-compatible D-Bus API)"
rauc status --output-format=json-pretty 2>/dev/null || rauc status
