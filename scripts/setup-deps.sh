#!/usr/bin/env bash
# Installs every tool rota's tests and demo use, on a fresh Debian 12 with Rust, gcc and
# Python. Idempotent; safe to run again. Python tools go into .venv at the repo root.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  dbus                      # dbus-daemon for private test buses
  libubootenv-tool          # fw_printenv / fw_setenv: env interop
  u-boot-tools              # mkenvimage, mkimage
  u-boot-qemu qemu-system-arm  # real U-Boot under qemu-system-aarch64
  qemu-user                 # ARM test runs (qemu-aarch64, qemu-arm)
  gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross
  openssl                   # signature and key interop
  rauc                      # Debian's rauc CLI against rota's RAUC-compatible D-Bus API
  squashfs-tools            # mksquashfs: the RAUC bundles of benches/install-local.sh
  nginx curl                # real HTTP(S) server for downloads
  fdisk mtools dosfstools e2fsprogs  # disk images for the U-Boot tests
  python3-venv
  mmdebstrap qemu-user-static binfmt-support arch-test  # the emulated gateway's Debian rootfs (scripts/gateway-vm-rootfs.sh)
  systemd                   # systemd-analyze verify/security (no systemd runs here)
  util-linux                # setpriv, runuser
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  [[ "$p" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
PIP_PACKAGES=(imgtool 'smpclient[serial]' smp oelint-adv)
.venv/bin/python -c 'import imgtool, smpclient, smp' 2>/dev/null && command -v .venv/bin/oelint-adv >/dev/null ||
  .venv/bin/pip install -q --disable-pip-version-check "${PIP_PACKAGES[@]}"
# Debian's arm64 kernel that tests/uboot_boot.rs boots from a slot (cached by version).
bash scripts/fetch-test-kernel.sh >/dev/null
# The test runner (the Rust toolchain images here ship it; built from crates.io if not).
command -v cargo-nextest >/dev/null || cargo install --locked --quiet cargo-nextest
echo "setup-deps: all tools present"
