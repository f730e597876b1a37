#!/usr/bin/env bash
# Benchmark input (not a test, not run in CI): the image pair of issue 12 ("Bytes over the
# air") — two arm64 Debian bookworm gateway root filesystems, each a 1 GiB ext4 image
# made from scratch with `mkfs.ext4 -d`:
#   v1.img  from `bookworm main` as the mirror serves it (the current point release);
#   v2.img  v1 after `apt-get upgrade` with bookworm-updates and bookworm-security
#           enabled (a monthly security update of a field device).
#
#   bash benches/ota-image-pair.sh          # prints the cache directory holding the pair
#
# Output, in ${ROTA_BENCH_CACHE:-$HOME/.cache/rota/ota-pair}/<key>/:
#   v1.img v2.img            the images (1 GiB each, sparse on disk)
#   v1.packages v2.packages  `package version` of every installed package
#   changed.packages         the packages whose version differs (v1 -> v2)
#   build.log                mmdebstrap's output
# <key> is a hash of this script (it holds the package list and the whole recipe) and of
# the mirrors used: a second run with the same script finds the pair and needs no network.
# `latest` in the cache directory links to the newest pair.
#
# How v2 is made, and why: ONE mmdebstrap run installs v1 from `bookworm main` only; a
# customize hook copies that tree out as v1 (mounts excluded, then the same clean-up that
# mmdebstrap applies to its own output), then enables the two update suites inside the
# chroot and runs `apt-get upgrade` there; mmdebstrap's output directory is v2. So v2 is
# exactly v1 plus the upgrade, as on a device: files apt does not touch (ssh host keys,
# the initrd if no upgrade rebuilds it, ...) are byte-identical, and both come from the
# same mirror state at the same moment. A second, separate mmdebstrap run with all three
# suites would instead be a fresh install: every random or time-stamped file (ssh host
# keys, initrd) would differ and the pair would overstate what an update changes.
# Reproducibility: SOURCE_DATE_EPOCH is set for mmdebstrap (it then removes its logs and
# caches), /etc/hostname and /etc/resolv.conf are fixed, and mkfs.ext4 gets a fixed UUID,
# a fixed directory hash seed, root_owner=0:0 and a fixed time (E2FSPROGS_FAKE_TIME).
# The trees still depend on the mirror's content on the day (bookworm moves by point
# releases and security updates), so the installed versions are recorded next to the
# images; set ROTA_DEBIAN_MIRROR / ROTA_DEBIAN_SECURITY_MIRROR to a snapshot mirror to
# pin them.
#
# Needs (Debian bookworm host, as root): mmdebstrap, qemu-user-static, binfmt-support,
# arch-test, e2fsprogs (mkfs.ext4, dumpe2fs), network to a Debian mirror on the first run.
#   apt-get install mmdebstrap qemu-user-static binfmt-support arch-test
# The arm64 binaries run under qemu-user through binfmt_misc. In a container binfmt_misc
# may not be mounted: this script mounts it (`mount -t binfmt_misc binfmt_misc
# /proc/sys/fs/binfmt_misc`) and runs `update-binfmts --enable` when `arch-test arm64`
# fails. The build takes ~5-10 minutes under emulation on 2 cores.
set -euo pipefail

SELF=$(readlink -f "$0")
CACHE_ROOT=${ROTA_BENCH_CACHE:-$HOME/.cache/rota/ota-pair}
SUITE=bookworm
# The gateway's packages (issue 12); initramfs-tools is named so that it is installed
# with the kernel, after the essential hook below has configured it.
PACKAGES=systemd,systemd-sysv,dbus,udev,linux-image-arm64,initramfs-tools,openssh-server,curl,ca-certificates,libubootenv-tool,e2fsprogs
IMAGE_SIZE=1G
FS_UUID=0a7a0000-0000-4000-8000-000000000012
FS_HASH_SEED=0a7a0000-0000-4000-8000-0000000012a5
# 2024-01-01T00:00:00Z: timestamps mmdebstrap and mkfs.ext4 write where they honour it.
EPOCH=1704067200

# The mirrors: from the host's apt sources unless given.
host_uri() { # $1 = a suite listed next to the wanted URI in debian.sources
  awk -v s="$1" '/^URIs:/ {u=$2} /^Suites:/ {for (i = 2; i <= NF; i++) if ($i == s) print u}' \
    /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1
}
MIRROR=${ROTA_DEBIAN_MIRROR:-$(host_uri bookworm)}
SECURITY_MIRROR=${ROTA_DEBIAN_SECURITY_MIRROR:-$(host_uri bookworm-security)}
if [[ -z $MIRROR || -z $SECURITY_MIRROR ]]; then
  echo "ota-image-pair: no Debian mirror found in /etc/apt/sources.list.d/debian.sources;" \
    "set ROTA_DEBIAN_MIRROR and ROTA_DEBIAN_SECURITY_MIRROR" >&2
  exit 2
fi

KEY=$( (cat "$SELF"; echo "$MIRROR $SECURITY_MIRROR") | sha256sum | cut -c1-16)
OUT=$CACHE_ROOT/$KEY
if [[ -f $OUT/v1.img && -f $OUT/v2.img && -f $OUT/changed.packages ]]; then
  echo "$OUT"
  exit 0
fi

need() { command -v "$1" >/dev/null || { echo "ota-image-pair: $1 missing ($2)" >&2; exit 2; }; }
need mmdebstrap "apt-get install mmdebstrap"
need arch-test "apt-get install arch-test"
need mkfs.ext4 "apt-get install e2fsprogs"
[[ $(id -u) == 0 ]] || { echo "ota-image-pair: run as root (mmdebstrap --mode=root)" >&2; exit 2; }
if ! arch-test arm64 >/dev/null 2>&1; then
  [[ -e /proc/sys/fs/binfmt_misc/register ]] ||
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  update-binfmts --enable >/dev/null 2>&1 || true
  arch-test arm64 >/dev/null 2>&1 || {
    echo "ota-image-pair: arm64 binaries do not run here (apt-get install qemu-user-static binfmt-support)" >&2
    exit 2
  }
fi

mkdir -p "$CACHE_ROOT"
WORK=$(mktemp -d "$CACHE_ROOT/build.XXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/v1"

# Run inside mmdebstrap's customize phase with the chroot as $1 and $2 = v1's directory.
# 1. Copy the tree as it is now (v1) without what is mounted into it (/proc, /sys,
#    /dev/pts, ...) and clean it as mmdebstrap cleans its output: no apt lists or
#    caches, no logs that name times, an empty machine-id, empty /run and /tmp.
# 2. Enable the update suites and upgrade in place (v2).
# 3. Fix /etc/hostname and /etc/resolv.conf in both.
cat >"$WORK/customize.sh" <<EOF
set -eu
root=\$1 v1=\$2
tar -C "\$root" --one-file-system --numeric-owner --xattrs --xattrs-include='*' -cf - . |
  tar -C "\$v1" --numeric-owner --xattrs --xattrs-include='*' -xpf -
rm -rf "\$v1"/var/lib/apt/lists/* "\$v1"/var/cache/apt/*.bin "\$v1"/var/cache/apt/archives/*.deb \\
  "\$v1"/var/log/dpkg.log "\$v1"/var/log/apt/history.log "\$v1"/var/log/apt/term.log \\
  "\$v1"/var/log/alternatives.log "\$v1"/var/cache/ldconfig/aux-cache \\
  "\$v1"/var/log/apt/eipp.log.xz "\$v1"/var/lib/dbus/machine-id \\
  "\$v1"/etc/apt/apt.conf.d/00mmdebstrap "\$v1"/etc/apt/apt.conf.d/99mmdebstrap \\
  "\$v1"/usr/bin/qemu-aarch64-static
find "\$v1"/run "\$v1"/tmp -mindepth 1 -delete
mkdir -p "\$v1"/var/lib/apt/lists/partial
[ ! -e "\$v1"/etc/machine-id ] || : > "\$v1"/etc/machine-id
cat > "\$root"/etc/apt/sources.list.d/updates.list <<SRC
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
SRC
chroot "\$root" apt-get update -q
chroot "\$root" env DEBIAN_FRONTEND=noninteractive apt-get -y -q \\
  -o Dpkg::Options::=--force-confold upgrade
# Host-independent /etc/hostname and /etc/resolv.conf (mmdebstrap copies the host's; the
# chroot needed the host's resolver until here).
for t in "\$root" "\$v1"; do
  echo gateway > "\$t"/etc/hostname
  echo "nameserver 127.0.0.53" > "\$t"/etc/resolv.conf
done
EOF

# initramfs: MODULES=list with only what the qemu virt board needs, written before the
# kernel is configured (Debian's MODULES=most runs mkinitramfs for 30 minutes under
# emulation); the essential hook runs after the essential set, before --include.
ESSENTIAL_HOOK='mkdir -p "$1/etc/initramfs-tools/conf.d" &&
  printf "MODULES=list\n" > "$1/etc/initramfs-tools/conf.d/rota-modules-list.conf" &&
  printf "virtio_mmio\nvirtio_pci\nvirtio_blk\next4\n" > "$1/etc/initramfs-tools/modules"'

echo "ota-image-pair: building the pair in $WORK (log: $WORK/build.log)" >&2
start=$(date +%s)
SOURCE_DATE_EPOCH=$EPOCH mmdebstrap --mode=root --arch=arm64 --variant=minbase \
  --include="$PACKAGES" --format=directory \
  --essential-hook="$ESSENTIAL_HOOK" \
  --customize-hook="sh $WORK/customize.sh \"\$1\" $WORK/v1" \
  "$SUITE" "$WORK/v2" "deb $MIRROR $SUITE main" >"$WORK/build.log" 2>&1 || {
  echo "ota-image-pair: mmdebstrap failed; the end of its log:" >&2
  tail -n 30 "$WORK/build.log" >&2
  exit 1
}
echo "ota-image-pair: trees built in $(($(date +%s) - start)) s" >&2

for v in v1 v2; do
  dpkg-query --admindir="$WORK/$v/var/lib/dpkg" -W -f '${Package} ${Version}\n' |
    LC_ALL=C sort >"$WORK/$v.packages"
done
LC_ALL=C join -j1 "$WORK/v1.packages" "$WORK/v2.packages" | awk '$2 != $3' >"$WORK/changed.packages"

# From scratch, as Yocto and debos do: a new file system per version.
for v in v1 v2; do
  rm -f "$WORK/$v.img"
  E2FSPROGS_FAKE_TIME=$EPOCH mkfs.ext4 -q -F -t ext4 -b 4096 -L rootfs -U "$FS_UUID" \
    -E "root_owner=0:0,hash_seed=$FS_HASH_SEED" -d "$WORK/$v" "$WORK/$v.img" "$IMAGE_SIZE" >&2
done

mkdir -p "$OUT"
mv "$WORK/build.log" "$WORK"/v?.img "$WORK"/*.packages "$OUT/"
ln -sfn "$KEY" "$CACHE_ROOT/latest"
echo "ota-image-pair: done in $(($(date +%s) - start)) s; $(wc -l <"$OUT/changed.packages") packages changed" >&2
echo "$OUT"
