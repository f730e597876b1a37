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
export ROTA=$PWD/target/release/rota
GW="bash $PWD/scripts/sim-gateway.sh"
W=$(mktemp -d /tmp/rota-bench.XXXX)
trap 'for g in "$W"/gw-*; do [[ -d $g ]] && $GW stop "$g"; done; rm -rf "$W"' EXIT

# A fresh simulated gateway (scripts/sim-gateway.sh, the tests' layout) for each size.
run_size() {
  local mib=$1 G=$W/gw-$1
  $GW create "$G" --slot-size $(((mib + 16) << 20))
  eval "$($GW env "$G")"
  cd "$G"
  mkdir -p src
  truncate -s $((mib + 16))M dd.img
  head -c ${mib}M /dev/urandom > src/rootfs.img
  printf '[update]\ncompatible = "acme-gateway"\nversion = "1.0.%s"\n[[image]]\nslot-class = "rootfs"\nfile = "rootfs.img"\n' "$mib" > src/manifest.toml
  "$ROTA" bundle create src b.rota --key keys/release.key.pem >/dev/null
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  # baseline: dd of the image into a slot file, synced
  local t0 t1 t2 t3
  t0=$(date +%s.%N)
  dd if=src/rootfs.img of=dd.img bs=1M conv=notrunc,fsync status=none
  t1=$(date +%s.%N)
  $GW start "$G"
  t2=$(date +%s.%N)
  "$ROTA" install "$G/b.rota" >/dev/null
  t3=$(date +%s.%N)
  local hwm; hwm=$(awk '/VmHWM/{print $2}' "/proc/$(cat service.pid)/status")
  $GW stop "$G"
  cd "$W"; rm -rf "$G"
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
