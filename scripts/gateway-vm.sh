#!/usr/bin/env bash
# An emulated ARM64 gateway: Debian's qemu_arm64 U-Boot, Debian's arm64 kernel and
# systemd, a GPT virtio disk with boot, rootfs A, rootfs B and data partitions, and rota
# installed the way the Yocto layer (yocto-layer/meta-rota) installs it. Used by
# tests/gateway_vm.rs (the journeys), scripts/ci-vm.sh and `scripts/demo.sh --vm`.
#
#   gateway-vm.sh build DIR --variant imx|rpi --rota AARCH64_BIN --keyring PUB.pem
#                 [--attempts N] [--compatible NAME] [--version V]
#       the factory image in DIR: disk.img (slot A holds V, default 1.0.0, B is empty),
#       flash.img (the board's U-Boot env, read-only pflash), host-fw_env.config and
#       layout (partition offsets), tree/ (the staged root file system slot images and
#       bundles are made from; `gateway-vm.sh clean DIR` removes it)
#   gateway-vm.sh bundle DIR VERSION OUT.rota --key KEY.pem [--unhealthy]
#       a signed bundle (made with the host's `rota bundle create`, $ROTA_HOST or `rota`
#       on PATH) whose rootfs image is DIR's tree at VERSION; --unhealthy: its
#       /etc/default/rota-mark-good names a health command that always fails
#   gateway-vm.sh run DIR [--http-port PORT]
#       power on (exec qemu-system-aarch64; serial console on stdin/stdout). With
#       --http-port the guest reaches 127.0.0.1:PORT on the host as http://10.0.2.100/
#       (user-mode network, guestfwd only: no other network).
#   gateway-vm.sh inspect DIR      (host-env DIR, host-status DIR: one of the two)
#       with the gateway powered off: the env as `fw_printenv` reads it from disk.img,
#       then `status.json` from the data partition (debugfs)
#   gateway-vm.sh prepare OUT --rota AARCH64_BIN [--attempts N]
#       keys, both variants and the journeys' bundles (tests/gateway_vm.rs), in OUT
#
# Variants (where the rota env lives; the board env in pflash holds the hooks that move
# it between the disk and U-Boot, as a board's default env would):
#   imx  i.MX style: a redundant pair at raw offsets of the boot disk before the first
#        partition (0x40000 and 0x44000, 16 KiB each); in the guest /etc/fw_env.config
#        names /dev/vda at those offsets.
#   rpi  Raspberry Pi style: uboot.env and uboot-redund.env on the FAT boot partition,
#        mounted at /boot by the layer's boot.mount; the guest uses the shipped
#        bootloader-env/fw_env.config.rpi.
# Both: the shipped bootloader-env/boot.cmd compiled with mkimage as boot.scr on the FAT
# boot partition; U-Boot's bootcmd sources it. Debian's qemu_arm64 U-Boot keeps its own
# env in flash only (where saveenv cannot write), so the board hooks rota_env_load /
# rota_env_save read and write the redundant pair themselves: the copy with the newer
# flag (libubootenv's rule: higher, 0 after 255) whose CRC holds is imported; a save
# writes the other copy with the next flag, so a power cut during a save leaves the
# previous copy.
#
# Root file system: scripts/gateway-vm-rootfs.sh (cached Debian tarball) plus rota's files
# from the repo at the paths the layer's recipes install them: rota.service,
# rota-mark-good.service, rota-health-check, /etc/default/rota-mark-good, the D-Bus policy
# and activation files, tmpfiles.d and sysusers.d (the group is created at build time, as
# the layer's useradd does: the root file system is read-only), /etc/rota/system.toml
# from the rota-conf template, data.mount (and boot.mount on rpi) from rota-data-mount.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
UBOOT=${ROTA_VM_UBOOT:-/usr/lib/u-boot/qemu_arm64/u-boot.bin}
LAYER=$REPO/yocto-layer/meta-rota
SECTOR=512
ENV_SIZE=0x4000
ENV_OFF1=0x40000
ENV_OFF2=0x44000
BOOT_MIB=32
DATA_MIB=64

fail() { echo "gateway-vm: $*" >&2; exit 2; }
note() { echo "gateway-vm: $*" >&2; }

# ----------------------------------------------------------------------- build
board_env() { # variant attempts
  local variant=$1 attempts=$2
  # RAM 0x40000000..0x80000000 (-m 1024); U-Boot relocates itself to the top.
  cat <<EOF
bootdelay=0
baudrate=115200
stdin=serial
stdout=serial
stderr=serial
devtype=virtio
devnum=0
scriptaddr=0x40100000
kernel_addr_r=0x40400000
ramdisk_addr_r=0x48000000
bootargs=console=ttyAMA0,115200 systemd.status_unit_format=name
rota_part_A=2
rota_part_B=3
rota_attempts=$attempts
bootcmd=virtio scan; if load virtio 0:1 \${scriptaddr} boot.scr; then source \${scriptaddr}; fi; echo "board: no slot booted"; poweroff
rota_boot=load virtio 0:\${rota_part} \${kernel_addr_r} \${rota_kernel} && load virtio 0:\${rota_part} \${ramdisk_addr_r} boot/initrd && booti \${kernel_addr_r} \${ramdisk_addr_r}:\${filesize} \${fdtcontroladdr}
rota_env_buf1=0x4e000000
rota_env_buf2=0x4e100000
rota_env_tmp=0x4e200000
rota_env_import=cp.b \${rota_env_src} \${rota_env_tmp} 4 && setexpr rota_env_a \${rota_env_src} + 5 && setexpr rota_env_b \${rota_env_tmp} + 4 && cp.b \${rota_env_a} \${rota_env_b} 0x3ffb && env import -c \${rota_env_tmp} 0x3fff
rota_env_load=mw.b \${rota_env_buf1} 0 0x4000; mw.b \${rota_env_buf2} 0 0x4000; run rota_env_rd1; run rota_env_rd2; setexpr rota_env_a \${rota_env_buf1} + 4; setexpr.b rota_env_f1 *\${rota_env_a}; setexpr rota_env_a \${rota_env_buf2} + 4; setexpr.b rota_env_f2 *\${rota_env_a}; setexpr rota_env_d 100 + \${rota_env_f2}; setexpr rota_env_d \${rota_env_d} - \${rota_env_f1}; setexpr rota_env_d \${rota_env_d} / 101; if test \${rota_env_f1} = ff && test \${rota_env_f2} = 0; then setenv rota_env_d 1; fi; if test \${rota_env_f2} = ff && test \${rota_env_f1} = 0; then setenv rota_env_d 0; fi; if test \${rota_env_d} = 1; then setenv rota_env_order "2 1"; else setenv rota_env_order "1 2"; fi; setenv rota_env_cur none; for c in \${rota_env_order}; do if test \${rota_env_cur} = none && test \${c} = 1; then setenv rota_env_src \${rota_env_buf1}; if run rota_env_import; then setenv rota_env_cur 1; setenv rota_env_flag \${rota_env_f1}; fi; fi; if test \${rota_env_cur} = none && test \${c} = 2; then setenv rota_env_src \${rota_env_buf2}; if run rota_env_import; then setenv rota_env_cur 2; setenv rota_env_flag \${rota_env_f2}; fi; fi; done; echo "board: rota env copy \${rota_env_cur} (flag \${rota_env_flag})"; if test \${rota_env_cur} = none; then setenv rota_env_flag 0; fi
rota_env_save=setexpr rota_env_nflag \${rota_env_flag} + 1; if test \${rota_env_nflag} = 100; then setenv rota_env_nflag 0; fi; if test \${rota_env_cur} = 1; then setenv rota_env_cur 2; setenv rota_env_dst \${rota_env_buf2}; else setenv rota_env_cur 1; setenv rota_env_dst \${rota_env_buf1}; fi; setenv rota_env_flag \${rota_env_nflag}; setenv rota_env_a; setenv rota_env_b; setenv rota_env_d; setenv rota_env_f1; setenv rota_env_f2; setenv rota_env_src; setenv rota_env_order; setenv c; env export -c -s 0x3fff \${rota_env_tmp}; cp.b \${rota_env_tmp} \${rota_env_dst} 4; setexpr rota_env_a \${rota_env_dst} + 4; mw.b \${rota_env_a} \${rota_env_nflag} 1; setexpr rota_env_a \${rota_env_dst} + 5; setexpr rota_env_b \${rota_env_tmp} + 4; cp.b \${rota_env_b} \${rota_env_a} 0x3ffb; if test \${rota_env_cur} = 1; then run rota_env_wr1; else run rota_env_wr2; fi; echo "board: rota env saved to copy \${rota_env_cur} (flag \${rota_env_nflag})"
EOF
  local b1=$((ENV_OFF1 / SECTOR)) b2=$((ENV_OFF2 / SECTOR)) n=$((ENV_SIZE / SECTOR))
  case $variant in
    imx)
      printf 'rota_env_rd1=virtio read ${rota_env_buf1} %#x %#x\n' $b1 $n
      printf 'rota_env_rd2=virtio read ${rota_env_buf2} %#x %#x\n' $b2 $n
      printf 'rota_env_wr1=virtio write ${rota_env_buf1} %#x %#x\n' $b1 $n
      printf 'rota_env_wr2=virtio write ${rota_env_buf2} %#x %#x\n' $b2 $n
      ;;
    rpi)
      echo 'rota_env_rd1=load virtio 0:1 ${rota_env_buf1} uboot.env'
      echo 'rota_env_rd2=load virtio 0:1 ${rota_env_buf2} uboot-redund.env'
      echo 'rota_env_wr1=fatwrite virtio 0:1 ${rota_env_buf1} uboot.env 0x4000'
      echo 'rota_env_wr2=fatwrite virtio 0:1 ${rota_env_buf2} uboot-redund.env 0x4000'
      ;;
  esac
}

# Installs rota's files into the tree $1 the way the layer's recipes do (see the top).
install_rota() { # tree variant rota-bin keyring attempts compatible
  local t=$1 variant=$2 bin=$3 keyring=$4 attempts=$5 compatible=$6
  local unit=$t/usr/lib/systemd/system
  install -D -m 0755 "$bin" "$t/usr/bin/rota"
  # rota_0.1.0.bb
  install -d "$unit" "$t/usr/libexec/rota" "$t/etc/default"
  install -m 0644 "$REPO/systemd/rota.service" "$REPO/systemd/rota-mark-good.service" "$unit/"
  install -m 0755 "$REPO/systemd/rota-health-check" "$t/usr/libexec/rota/"
  install -m 0644 "$REPO/systemd/rota-mark-good.default" "$t/etc/default/rota-mark-good"
  install -d "$t/usr/share/dbus-1/system.d" "$t/usr/share/dbus-1/system-services" \
    "$t/usr/share/dbus-1/interfaces"
  install -m 0644 "$REPO/dbus/io.rota.conf" "$t/usr/share/dbus-1/system.d/"
  install -m 0644 "$REPO/dbus/io.rota.service" "$t/usr/share/dbus-1/system-services/"
  install -m 0644 "$REPO"/dbus/*.xml "$t/usr/share/dbus-1/interfaces/"
  install -D -m 0644 "$REPO/systemd/rota.sysusers" "$t/usr/lib/sysusers.d/rota.conf"
  install -D -m 0644 "$REPO/systemd/rota.tmpfiles" "$t/usr/lib/tmpfiles.d/rota.conf"
  # rota-conf_0.1.0.bb: the template with the layer's defaults for a virtio disk
  install -d "$t/etc/rota/keys"
  install -m 0644 "$keyring" "$t/etc/rota/keys/release.pub.pem"
  sed -e "s#@COMPATIBLE@#$compatible#" \
    -e 's#@SLOT_A_DEVICE@#/dev/vda2#' -e 's#@SLOT_B_DEVICE@#/dev/vda3#' \
    -e 's#@DATA_DIR@#/data/rota#' -e "s#@BOOT_ATTEMPTS@#$attempts#" \
    -e 's#@VERSION_SCHEME@#semver#' -e 's#@RAUC_COMPAT@#false#' -e 's#@DBUS_GROUP@#rota#' \
    -e 's#@SYSCONFDIR@#/etc#' -e 's#@KEYRING@#"/etc/rota/keys/release.pub.pem"#' \
    "$LAYER/recipes-core/rota/files/system.toml" >"$t/etc/rota/system.toml"
  grep -q '@[A-Z_]*@' "$t/etc/rota/system.toml" && fail "a placeholder of system.toml was left unfilled"
  # rota-data-mount_0.1.0.bb (data by label; /boot on rpi)
  sed -e 's#@DEVICE@#/dev/disk/by-label/data#' -e 's#@FSTYPE@#ext4#' \
    "$LAYER/recipes-core/rota-data-mount/files/data.mount" >"$unit/data.mount"
  local enable=(rota.service rota-mark-good.service data.mount)
  if [[ $variant == rpi ]]; then
    sed -e 's#@DEVICE@#/dev/disk/by-label/boot#' -e 's#@FSTYPE@#vfat#' \
      "$LAYER/recipes-core/rota-data-mount/files/boot.mount" >"$unit/boot.mount"
    enable+=(boot.mount)
    # rota-fw-env-config: the BSP's file, the shipped one for the Pi
    install -m 0644 "$REPO/bootloader-env/fw_env.config.rpi" "$t/etc/fw_env.config"
  else
    # rota-fw-env-config with ROTA_FW_ENV_CONFIG for this board: the raw pair on vda
    cat >"$t/etc/fw_env.config" <<EOF
# QEMU virt gateway: the rota env as a redundant pair at raw offsets of the virtio disk
# (as i.MX keeps it on the eMMC), before the first partition.
# device   offset   size
/dev/vda   $ENV_OFF1  $ENV_SIZE
/dev/vda   $ENV_OFF2  $ENV_SIZE
EOF
  fi
  # The board (what a BSP's base-files would bring): the slots boot read-only (boot.cmd's
  # `ro`); the state systemd-logind and the random seed keep in /var/lib/systemd is
  # volatile, rota's lives on the data partition.
  printf '%s\n' "# <file system> <mount point> <type> <options> <dump> <pass>" \
    "tmpfs /var/lib/systemd tmpfs mode=0755,nosuid,nodev 0 0" >"$t/etc/fstab"
  systemctl --root="$t" enable "${enable[@]}" >/dev/null 2>&1 ||
    fail "systemctl --root enable ${enable[*]} failed"
  # useradd in the recipe = the group exists in the image (the root is read-only)
  chroot "$t" systemd-sysusers /usr/lib/sysusers.d/rota.conf >/dev/null ||
    fail "systemd-sysusers in the tree failed"
}

set_version() { # tree version
  local t=$1 v=$2
  rm -f "$t/etc/os-release"
  sed -e "s/^VERSION_ID=.*/VERSION_ID=\"$v\"/" -e "s/^PRETTY_NAME=.*/PRETTY_NAME=\"rota gateway $v (Debian 12)\"/" \
    "$t/usr/lib/os-release" >"$t/etc/os-release"
  grep -q "^VERSION_ID=\"$v\"" "$t/etc/os-release" || echo "VERSION_ID=\"$v\"" >>"$t/etc/os-release"
}

mkfs_slot() { # tree out.ext4
  local mib
  mib=$(du -sm --apparent-size "$1" | cut -f1)
  mib=$(((mib * 12 / 10 + 48 + 15) / 16 * 16))
  rm -f "$2"
  mkfs.ext4 -q -F -t ext4 -b 4096 -L rootfs -E root_owner=0:0 -d "$1" "$2" "${mib}M" >/dev/null
}

cmd_build() {
  local dir=$1 variant="" bin="" keyring="" attempts=3 compatible=qemu-arm64-gateway version=1.0.0
  shift
  while (($#)); do
    case $1 in
      --variant) variant=$2; shift 2 ;;
      --rota) bin=$2; shift 2 ;;
      --keyring) keyring=$2; shift 2 ;;
      --attempts) attempts=$2; shift 2 ;;
      --compatible) compatible=$2; shift 2 ;;
      --version) version=$2; shift 2 ;;
      *) fail "build: unknown option $1" ;;
    esac
  done
  [[ $variant == imx || $variant == rpi ]] || fail "build: --variant imx|rpi"
  [[ -f $bin ]] || fail "build: --rota names no file ('$bin'): the aarch64 release binary (scripts/ci-arm.sh builds it)"
  [[ -f $keyring ]] || fail "build: --keyring names no file"
  [[ $(id -u) == 0 ]] || fail "run as root (the tree keeps root-owned files)"
  for c in mkimage mkenvimage sfdisk mkfs.vfat mcopy mkfs.ext4 qemu-system-aarch64; do
    command -v $c >/dev/null || fail "$c missing (bash scripts/setup-deps.sh)"
  done
  [[ -f $UBOOT ]] || fail "$UBOOT missing: apt-get install u-boot-qemu"
  local rootfs start=$SECONDS
  rootfs=$(bash "$REPO/scripts/gateway-vm-rootfs.sh")
  # Older cached trees (another recipe) go.
  find "$(dirname "$rootfs")" -maxdepth 1 -name 'rootfs-*.tar' ! -name "$(basename "$rootfs")" -delete
  rm -rf "$dir"
  mkdir -p "$dir/tree"
  dir=$(cd "$dir" && pwd)
  tar -C "$dir/tree" --numeric-owner -xpf "$rootfs"
  install_rota "$dir/tree" "$variant" "$bin" "$keyring" "$attempts" "$compatible"
  set_version "$dir/tree" "$version"
  head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/tree/etc/machine-id"
  echo >>"$dir/tree/etc/machine-id"
  mkfs_slot "$dir/tree" "$dir/slot-a.ext4"
  echo "$variant" >"$dir/variant"

  # Partitions (sectors): boot FAT, A, B (room to grow: 1.5x the factory image), data.
  local slot_mib a_start b_start d_start boot_start=2048 total
  slot_mib=$(($(stat -c %s "$dir/slot-a.ext4") * 3 / 2 / 1048576))
  slot_mib=$(((slot_mib + 15) / 16 * 16))
  a_start=$((boot_start + BOOT_MIB * 2048))
  b_start=$((a_start + slot_mib * 2048))
  d_start=$((b_start + slot_mib * 2048))
  total=$(((d_start + DATA_MIB * 2048 + 2048) * SECTOR))
  rm -f "$dir/disk.img"
  truncate -s "$total" "$dir/disk.img"
  sfdisk -q "$dir/disk.img" <<EOF
label: gpt
first-lba: 2048
start=$boot_start, size=$((BOOT_MIB * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=boot
start=$a_start, size=$((slot_mib * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=rootfs_a
start=$b_start, size=$((slot_mib * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=rootfs_b
start=$d_start, size=$((DATA_MIB * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=data
EOF
  cat >"$dir/layout" <<EOF
BOOT_START=$boot_start
A_START=$a_start
B_START=$b_start
DATA_START=$d_start
SLOT_SECTORS=$((slot_mib * 2048))
DATA_SECTORS=$((DATA_MIB * 2048))
EOF

  # The boot partition: boot.scr from the shipped boot.cmd, and on rpi the env files.
  mkimage -A arm64 -O linux -T script -C none -n "rota boot selection" \
    -d "$REPO/bootloader-env/boot.cmd" "$dir/boot.scr" >/dev/null
  printf 'BOOT_ORDER=A B\nBOOT_A_LEFT=%s\nBOOT_B_LEFT=%s\n' "$attempts" "$attempts" >"$dir/factory-env.txt"
  mkenvimage -r -s "$ENV_SIZE" -o "$dir/env.bin" "$dir/factory-env.txt"
  rm -f "$dir/boot.vfat"
  mkfs.vfat -C -n boot "$dir/boot.vfat" $((BOOT_MIB * 1024)) >/dev/null 2>&1
  mcopy -i "$dir/boot.vfat" "$dir/boot.scr" ::boot.scr
  if [[ $variant == rpi ]]; then
    mcopy -i "$dir/boot.vfat" "$dir/env.bin" ::uboot.env
  else
    dd if="$dir/env.bin" of="$dir/disk.img" bs=$SECTOR seek=$((ENV_OFF1 / SECTOR)) conv=notrunc status=none
  fi
  dd if="$dir/boot.vfat" of="$dir/disk.img" bs=$SECTOR seek=$boot_start conv=notrunc,sparse status=none
  dd if="$dir/slot-a.ext4" of="$dir/disk.img" bs=$SECTOR seek=$a_start conv=notrunc,sparse status=none
  rm -f "$dir/data.ext4"
  mkfs.ext4 -q -F -L data "$dir/data.ext4" "${DATA_MIB}M" >/dev/null
  dd if="$dir/data.ext4" of="$dir/disk.img" bs=$SECTOR seek=$d_start conv=notrunc,sparse status=none
  rm -f "$dir/boot.vfat" "$dir/data.ext4" "$dir/env.bin"

  # The board: U-Boot's env in read-only pflash (bank 1 of the virt board, 64 MiB).
  board_env "$variant" "$attempts" >"$dir/board-env.txt"
  mkenvimage -s 0x40000 -o "$dir/flash.img" "$dir/board-env.txt"
  truncate -s 64M "$dir/flash.img"
  host_fw_env_config "$dir" >"$dir/host-fw_env.config"
  note "built $variant gateway in $dir in $((SECONDS - start)) s: slot A $(du -h --apparent-size "$dir/slot-a.ext4" | cut -f1) ($version), slots ${slot_mib} MiB"
}

host_fw_env_config() { # dir: fw_env.config for the host, pointing into disk.img or the extracted env files
  local dir=$1
  if [[ $(cat "$dir/variant") == rpi ]]; then
    printf '%s 0x0 %s\n%s 0x0 %s\n' "$dir/inspect/uboot.env" $ENV_SIZE "$dir/inspect/uboot-redund.env" $ENV_SIZE
  else
    printf '%s %s %s\n%s %s %s\n' "$dir/disk.img" $ENV_OFF1 $ENV_SIZE "$dir/disk.img" $ENV_OFF2 $ENV_SIZE
  fi
}

# ----------------------------------------------------------------------- bundle
cmd_bundle() {
  local dir=$1 version=$2 out=$3 key="" unhealthy=0 rota=${ROTA_HOST:-rota}
  shift 3
  while (($#)); do
    case $1 in
      --key) key=$2; shift 2 ;;
      --unhealthy) unhealthy=1; shift ;;
      *) fail "bundle: unknown option $1" ;;
    esac
  done
  [[ -d $dir/tree ]] || fail "bundle: $dir/tree is gone (build again)"
  local src=$dir/bundle-src.$$ t=$dir/tree defaults saved_defaults
  defaults=$t/etc/default/rota-mark-good
  saved_defaults=$(cat "$defaults")
  rm -rf "$src"
  mkdir -p "$src"
  set_version "$t" "$version"
  if ((unhealthy)); then
    # The release's own health check fails: the application it names never comes up.
    sed -i -e 's/^ROTA_HEALTH_COMMAND=.*/ROTA_HEALTH_COMMAND="test -e \/run\/gateway-app-ready"/' \
      -e 's/^ROTA_HEALTH_TIMEOUT=.*/ROTA_HEALTH_TIMEOUT=5/' -e 's/^ROTA_HEALTH_INTERVAL=.*/ROTA_HEALTH_INTERVAL=1/' \
      "$defaults"
  fi
  mkfs_slot "$t" "$src/rootfs.ext4"
  printf '%s\n' "$saved_defaults" >"$defaults"
  local compatible
  compatible=$(sed -n 's/^compatible = "\(.*\)"/\1/p' "$t/etc/rota/system.toml")
  cat >"$src/manifest.toml" <<EOF
[update]
compatible = "$compatible"
version = "$version"
description = "gateway $version$( ((unhealthy)) && echo ' (never healthy)')"

[[image]]
slot-class = "rootfs"
file = "rootfs.ext4"
EOF
  rm -f "$out"
  "$rota" bundle create "$src" "$out" --key "$key" >/dev/null
  rm -rf "$src"
  note "bundle $out: $version$( ((unhealthy)) && echo ' (unhealthy)'), $(du -h "$out" | cut -f1)"
}

# ----------------------------------------------------------------------- run
cmd_run() {
  local dir=$1 port=""
  shift
  while (($#)); do
    case $1 in
      --http-port) port=$2; shift 2 ;;
      *) fail "run: unknown option $1" ;;
    esac
  done
  local net=(-nic none)
  if [[ -n $port ]]; then
    net=(-netdev "user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:$port"
      -device virtio-net-device,netdev=net0)
  fi
  exec qemu-system-aarch64 -M virt -cpu cortex-a57 -smp "${ROTA_VM_SMP:-2}" -m 1024 \
    -bios "$UBOOT" -display none -monitor none -serial stdio \
    -drive "if=pflash,format=raw,unit=1,readonly=on,file=$dir/flash.img" \
    -drive "if=none,file=$dir/disk.img,format=raw,id=hd0" -device virtio-blk-device,drive=hd0 \
    "${net[@]}"
}

# ----------------------------------------------------------------------- inspect
cmd_host_env() { # dir
  local dir=$1
  # shellcheck disable=SC1091
  source "$dir/layout"
  if [[ $(cat "$dir/variant") == rpi ]]; then
    rm -rf "$dir/inspect"
    mkdir -p "$dir/inspect"
    local img="$dir/disk.img@@$((BOOT_START * SECTOR))"
    mcopy -n -i "$img" ::uboot.env "$dir/inspect/uboot.env"
    mcopy -n -i "$img" ::uboot-redund.env "$dir/inspect/uboot-redund.env" 2>/dev/null ||
      : >"$dir/inspect/uboot-redund.env"
    truncate -s $((ENV_SIZE)) "$dir/inspect/uboot-redund.env"
  fi
  host_fw_env_config "$dir" >"$dir/host-fw_env.config"
  fw_printenv -c "$dir/host-fw_env.config"
}

cmd_host_status() { # dir
  local dir=$1 out
  # shellcheck disable=SC1091
  source "$dir/layout"
  dd if="$dir/disk.img" of="$dir/data.ext4" bs=$SECTOR skip="$DATA_START" count="$DATA_SECTORS" status=none
  out=$(debugfs -R 'cat /rota/status.json' "$dir/data.ext4" 2>/dev/null)
  rm -f "$dir/data.ext4"
  [[ -n $out ]] || fail "no /rota/status.json on the data partition"
  printf '%s\n' "$out"
}

cmd_inspect() {
  echo "== fw_printenv (disk.img, powered off)"
  cmd_host_env "$1"
  echo "== status.json (data partition)"
  cmd_host_status "$1"
}

# ----------------------------------------------------------------------- prepare
# Everything the journeys use, in OUT: keys/, imx/ and rpi/ (factory images), www/ (the
# bundles nginx serves: <variant>-2.0.0.rota, imx-2.0.1-unhealthy.rota), then OUT/ready.
cmd_prepare() {
  local out=$1 bin="" attempts=2 start=$SECONDS
  shift
  while (($#)); do
    case $1 in
      --rota) bin=$2; shift 2 ;;
      --attempts) attempts=$2; shift 2 ;;
      *) fail "prepare: unknown option $1" ;;
    esac
  done
  local rota=${ROTA_HOST:-rota}
  command -v "$rota" >/dev/null || fail "prepare: the host's rota CLI ($rota) is missing: cargo build --bin rota, ROTA_HOST=target/debug/rota"
  rm -rf "$out"
  mkdir -p "$out/www"
  "$rota" keygen --out-dir "$out/keys" --name release >/dev/null
  local k=$out/keys/release
  cmd_build "$out/imx" --variant imx --rota "$bin" --keyring "$k.pub.pem" --attempts "$attempts"
  cmd_bundle "$out/imx" 2.0.0 "$out/www/imx-2.0.0.rota" --key "$k.key.pem"
  cmd_bundle "$out/imx" 2.0.1 "$out/www/imx-2.0.1-unhealthy.rota" --key "$k.key.pem" --unhealthy
  rm -rf "$out/imx/tree" "$out/imx/slot-a.ext4"
  cmd_build "$out/rpi" --variant rpi --rota "$bin" --keyring "$k.pub.pem" --attempts "$attempts"
  cmd_bundle "$out/rpi" 2.0.0 "$out/www/rpi-2.0.0.rota" --key "$k.key.pem"
  rm -rf "$out/rpi/tree" "$out/rpi/slot-a.ext4"
  touch "$out/ready"
  note "prepared in $out in $((SECONDS - start)) s"
}

case ${1:-} in
  build) shift; cmd_build "$@" ;;
  bundle) shift; cmd_bundle "$@" ;;
  run) shift; cmd_run "$@" ;;
  inspect) shift; cmd_inspect "$@" ;;
  host-env) shift; cmd_host_env "$@" ;;
  host-status) shift; cmd_host_status "$@" ;;
  prepare) shift; cmd_prepare "$@" ;;
  clean) rm -rf "${2:?DIR}/tree" "${2}/slot-a.ext4" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
esac
