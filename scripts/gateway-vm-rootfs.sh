#!/usr/bin/env bash
# The Debian part of the emulated gateway (scripts/gateway-vm.sh): an arm64 bookworm root
# file system from Debian's packages, built with mmdebstrap under qemu-user and cached as
# a tarball. Nothing of rota is in it (gateway-vm.sh adds rota's files per image), so it
# is rebuilt only when this recipe changes.
#
#   bash scripts/gateway-vm-rootfs.sh      # prints the path of the cached rootfs.tar
#
# Cache: ${ROTA_VM_CACHE:-$HOME/.cache/rota/gateway-vm}/rootfs-<key>.tar, <key> = a hash of
# this file (package list and every hook) and of the mirror. A cold build takes ~5 minutes
# on 2 cores; a cached one is instant and needs no network.
#
# Kept small, so that slot images and bundles install fast:
#  - initramfs: MODULES=list with only virtio and ext4 (Debian's MODULES=most runs
#    mkinitramfs for over half an hour under emulation), written before the kernel is
#    configured (essential hook);
#  - kernel modules: only what the QEMU virt board uses (virtio block/net, ext4, vfat for
#    a Raspberry Pi-style /boot); docs, man pages, locales, apt's lists, device trees,
#    the hardware database, iconv modules and perl's library removed (~180 MB left).
# Board set-up that is not rota's (what a BSP would do): root auto-login on the serial
# console ttyAMA0, a static address for QEMU's user-mode network (systemd-networkd),
# hostname, systemd-firstboot masked (the root file system is read-only).
#
# Needs (Debian bookworm host, as root): mmdebstrap, qemu-user-static, binfmt-support,
# arch-test; network to a Debian mirror on the first run.
set -euo pipefail

SELF=$(readlink -f "$0")
CACHE=${ROTA_VM_CACHE:-$HOME/.cache/rota/gateway-vm}
SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,udev,linux-image-arm64,initramfs-tools,libubootenv-tool,e2fsprogs,kmod

host_uri() {
  awk -v s="$1" '/^URIs:/ {u=$2} /^Suites:/ {for (i = 2; i <= NF; i++) if ($i == s) print u}' \
    /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1
}
MIRROR=${ROTA_DEBIAN_MIRROR:-$(host_uri bookworm)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

KEY=$( (cat "$SELF"; echo "$MIRROR") | sha256sum | cut -c1-16)
OUT=$CACHE/rootfs-$KEY.tar
if [[ -s $OUT ]]; then
  echo "$OUT"
  exit 0
fi

fail() { echo "gateway-vm-rootfs: $*" >&2; exit 2; }
command -v mmdebstrap >/dev/null || fail "mmdebstrap missing: apt-get install mmdebstrap"
command -v arch-test >/dev/null || fail "arch-test missing: apt-get install arch-test"
[[ $(id -u) == 0 ]] || fail "run as root (mmdebstrap --mode=root)"
if ! arch-test arm64 >/dev/null 2>&1; then
  [[ -e /proc/sys/fs/binfmt_misc/register ]] ||
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  update-binfmts --enable >/dev/null 2>&1 || true
  arch-test arm64 >/dev/null 2>&1 ||
    fail "arm64 binaries do not run here (apt-get install qemu-user-static binfmt-support)"
fi

mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/build.XXXX")
trap 'rm -rf "$WORK"' EXIT

ESSENTIAL_HOOK='mkdir -p "$1/etc/initramfs-tools/conf.d" &&
  printf "MODULES=list\n" > "$1/etc/initramfs-tools/conf.d/rota-modules-list.conf" &&
  printf "virtio_mmio\nvirtio_pci\nvirtio_blk\next4\n" > "$1/etc/initramfs-tools/modules"'

cat >"$WORK/customize.sh" <<'EOF'
set -eu
root=$1
# Kernel modules: keep what the virt board needs, drop the rest (~300 MB), re-index.
kver=$(ls "$root/lib/modules")
find "$root/lib/modules/$kver/kernel" -name '*.ko*' | while read -r m; do
  case ${m##*/} in
    virtio*.ko* | net_failover.ko* | failover.ko* | ext4.ko* | jbd2.ko* | mbcache.ko* | \
      crc16.ko* | crc32c*.ko* | libcrc32c.ko* | fat.ko* | vfat.ko* | nls_cp437.ko* | \
      nls_ascii.ko* | nls_iso8859-1.ko* | nls_utf8.ko*) ;;
    *) rm -f "$m" ;;
  esac
done
find "$root/lib/modules/$kver/kernel" -type d -empty -delete
chroot "$root" depmod -a "$kver"
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
  "$root"/usr/share/info/* "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
  "$root"/var/cache/debconf/*-old "$root"/var/log/*.log "$root"/var/log/apt/*
# The kernel as U-Boot's booti wants it (Debian's arm64 vmlinuz is an uncompressed Image).
mv "$root/boot/vmlinuz-$kver" "$root/boot/Image"
mv "$root/boot/initrd.img-$kver" "$root/boot/initrd"
rm -f "$root"/vmlinuz* "$root"/initrd.img*
# Not used on this board: device trees (QEMU hands U-Boot its own), the hardware database,
# iconv modules, perl's library beyond perl-base (nothing runs perl after the build).
rm -rf "$root/usr/lib/linux-image-$kver" "$root"/usr/lib/udev/hwdb.bin "$root"/usr/lib/udev/hwdb.d/* \
  "$root"/usr/lib/aarch64-linux-gnu/gconv "$root"/usr/lib/aarch64-linux-gnu/perl
# Serial console: root logs in by itself, as on a bench gateway with a debug UART.
mkdir -p "$root/etc/systemd/system/serial-getty@ttyAMA0.service.d"
cat > "$root/etc/systemd/system/serial-getty@ttyAMA0.service.d/autologin.conf" <<UNIT
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200 %I \$TERM
UNIT
# QEMU user-mode network: the guest is 10.0.2.15, the gateway 10.0.2.2.
mkdir -p "$root/etc/systemd/network"
cat > "$root/etc/systemd/network/10-qemu.network" <<NET
[Match]
Name=e*
[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
LinkLocalAddressing=no
IPv6AcceptRA=no
NET
ln -sf /lib/systemd/system/systemd-networkd.service \
  "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
for u in systemd-firstboot.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer \
  e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$u"
done
echo gateway > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 gateway\n' > "$root/etc/hosts"
: > "$root/etc/resolv.conf"
# Mount points of the read-only root: the data partition and the boot partition.
mkdir -p "$root/data" "$root/boot"
EOF

echo "gateway-vm-rootfs: building $OUT (log: $WORK/build.log)" >&2
start=$(date +%s)
mmdebstrap --mode=root --arch=arm64 --variant=minbase --include="$PACKAGES" --format=tar \
  --essential-hook="$ESSENTIAL_HOOK" \
  --customize-hook="sh $WORK/customize.sh \"\$1\"" \
  "$SUITE" "$WORK/rootfs.tar" "deb $MIRROR $SUITE main" >"$WORK/build.log" 2>&1 || {
  tail -n 30 "$WORK/build.log" >&2
  fail "mmdebstrap failed (log above)"
}
mv "$WORK/rootfs.tar" "$OUT"
echo "gateway-vm-rootfs: built in $(($(date +%s) - start)) s: $(du -h "$OUT" | cut -f1)" >&2
echo "$OUT"
