#!/usr/bin/env bash
# Benchmark (not a test): local install of a 256 MiB image by `rota service`, side by
# side with `dd` of the same image into the same kind of slot file, in one run.
# Prints throughput, the ratio, and the service's peak RSS (VmHWM). Also repeats with a
# 64 MiB image to show memory does not grow with the image.
#   bash benches/install-local.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-256}
cargo build --release --quiet
ROTA=$PWD/target/release/rota
W=$(mktemp -d /tmp/rota-bench.XXXX)
trap 'kill $(cat $W/svc.pid 2>/dev/null) $(cat $W/dbus.pid 2>/dev/null) 2>/dev/null; rm -rf $W' EXIT
cd "$W"
mkdir -p keys data src
"$ROTA" keygen --out-dir keys --name k >/dev/null
printf 'BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n' > env.txt
mkenvimage -s 0x4000 -o uboot.env env.txt
echo "$W/uboot.env 0x0 0x4000" > fw_env.config
echo "rota.slot=A" > cmdline
cat > system.toml <<T
[system]
compatible = "bench"
data-dir = "$W/data"
kernel-cmdline = "$W/cmdline"
[keyring]
paths = ["$W/keys/k.pub.pem"]
[bootloader]
fw-env-config = "$W/fw_env.config"
[slot.rootfs.0]
device = "$W/a.img"
bootname = "A"
[slot.rootfs.1]
device = "$W/b.img"
bootname = "B"
T
cat > bus.conf <<X
<busconfig><type>system</type><listen>unix:path=$W/bus</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/></policy></busconfig>
X
dbus-daemon --config-file=bus.conf --fork --print-pid=1 > dbus.pid
export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$W/bus ROTA_CONFIG=$W/system.toml

run_size() {
  local mib=$1
  truncate -s $((mib + 16))M a.img b.img dd.img
  head -c ${mib}M /dev/urandom > src/rootfs.img
  printf '[update]\ncompatible = "bench"\nversion = "1.0.%s"\n[[image]]\nslot-class = "rootfs"\nfile = "rootfs.img"\n' "$mib" > src/manifest.toml
  "$ROTA" bundle create src b.rota --key keys/k.key.pem >/dev/null
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  # baseline: dd of the image into a slot file, synced
  local t0 t1 t2 t3
  t0=$(date +%s.%N)
  dd if=src/rootfs.img of=dd.img bs=1M conv=notrunc,fsync status=none
  t1=$(date +%s.%N)
  "$ROTA" service 2>svc.log & echo $! > svc.pid
  for _ in $(seq 100); do busctl --system status io.rota >/dev/null 2>&1 && break; sleep 0.05; done
  t2=$(date +%s.%N)
  "$ROTA" install "$W/b.rota" >/dev/null
  t3=$(date +%s.%N)
  local hwm; hwm=$(awk '/VmHWM/{print $2}' /proc/$(cat svc.pid)/status)
  kill "$(cat svc.pid)"; wait "$(cat svc.pid)" 2>/dev/null || true
  printf 'BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n' > env.txt; mkenvimage -s 0x4000 -o uboot.env env.txt; rm -f data/status.json
  python3 - "$mib" "$t0" "$t1" "$t2" "$t3" "$hwm" <<'P'
import sys
mib, t0, t1, t2, t3, hwm = int(sys.argv[1]), *map(float, sys.argv[2:6]), int(sys.argv[6])
dd, rota = t1 - t0, t3 - t2
print(f"image {mib} MiB: dd {mib/dd:7.1f} MiB/s ({dd:.2f} s) | rota install {mib/rota:7.1f} MiB/s ({rota:.2f} s, "
      f"verify chunks + write + fsync + read-back SHA-256/CRC32 + env) | rota/dd time ratio {rota/dd:.2f} | service peak RSS {hwm/1024:.1f} MiB")
P
}
run_size 64
run_size "$SIZE_MIB"
