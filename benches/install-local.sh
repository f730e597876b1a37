#!/usr/bin/env bash
# Benchmark (not a test): a local install of one image, side by side in one run, by
#   dd        dd of the image into a slot file, conv=fsync (the disk's speed);
#   rota      `rota install` through the service, [install] read-back = crc (default);
#   rota-off  the same with read-back = off;
#   rota-f1   `rota install` of a format 1 bundle (`--format 1`, raw 64 KiB chunks) of the
#             same image, read-back = crc: the throughput before compressed frames;
#   rota-8m   format 2 with 8 MiB frames (`--frame-size 8388608`, as `--delta-from` packs
#             them), read-back = crc: three frames in flight;
#   rauc      Debian's RAUC (`rauc install` of a plain bundle of the same image, raw slot,
#             bootloader=noop, its own service on its own private bus).
# Every slot is a preallocated file on the same file system; the page cache is dropped
# before each run; runs alternate (dd, rota, rota-off, rauc, dd, ...) so a busy moment on
# the machine hits all of them alike. Prints min and median throughput per tool and the
# ratios the install-pipeline issue sets (rota ≥ 1.5× RAUC, ≥ 0.5× dd; rota-off ≥ 0.7× dd),
# and the service's peak RSS.
#   bash benches/install-local.sh [SIZE_MIB] [RUNS]      (defaults 256, 5)
# The image is SIZE_MIB of random bytes (nothing compresses, nothing is zero), or with
# ROTA_BENCH_IMAGE=FILE the first SIZE_MIB of FILE (e.g. v2.img of benches/ota-image-pair.sh:
# a real root file system, compressible, with zero runs).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-256}
RUNS=${2:-5}
cargo build --release --quiet
export ROTA=$PWD/target/release/rota
GW="bash $PWD/scripts/sim-gateway.sh"
W=$(mktemp -d /tmp/rota-bench.XXXX)
RAUC_BUS_PID=
RAUC_PID=
cleanup() {
  for g in "$W"/gw-*; do [[ -d $g ]] && $GW stop "$g" || true; done
  [[ -n $RAUC_PID ]] && kill "$RAUC_PID" 2>/dev/null || true
  [[ -n $RAUC_BUS_PID ]] && kill "$RAUC_BUS_PID" 2>/dev/null || true
  umount -R "$W/mnt" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
for tool in mksquashfs rauc openssl dbus-daemon; do
  command -v "$tool" >/dev/null || { echo "install-local: $tool missing (bash scripts/setup-deps.sh)" >&2; exit 1; }
done
SLOT=$(((SIZE_MIB + 16) << 20))
prealloc() { head -c "$SLOT" /dev/zero > "$1"; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
now() { date +%s.%N; }

mkdir -p "$W/src"
if [[ -n ${ROTA_BENCH_IMAGE:-} ]]; then
  head -c "${SIZE_MIB}M" "$ROTA_BENCH_IMAGE" > "$W/src/rootfs.img"
  [[ $(stat -c %s "$W/src/rootfs.img") == $((SIZE_MIB << 20)) ]] ||
    { echo "install-local: $ROTA_BENCH_IMAGE is smaller than ${SIZE_MIB} MiB" >&2; exit 1; }
else
  head -c "${SIZE_MIB}M" /dev/urandom > "$W/src/rootfs.img"
fi

# --- rota: four gateways: read-back crc and off, a format 1 bundle, 8 MiB frames ---
for gw in crc off f1 8m; do
  G=$W/gw-$gw
  mode=crc pack=(--format 2)
  case $gw in
    off) mode=off ;;
    f1) pack=(--format 1) ;;
    8m) pack=(--frame-size 8388608) ;;
  esac
  $GW create "$G" --slot-size "$SLOT" --install "read-back = \"$mode\""
  prealloc "$G/b.img"
  cp "$W/src/rootfs.img" "$G/rootfs.img"
  printf '[update]\ncompatible = "acme-gateway"\nversion = "1.0.0"\n[[image]]\nslot-class = "rootfs"\nfile = "rootfs.img"\n' > "$G/manifest.toml"
  mkdir -p "$G/src" && mv "$G/rootfs.img" "$G/manifest.toml" "$G/src/"
  (cd "$G" && "$ROTA" bundle create src b.rota "${pack[@]}" --key keys/release.key.pem >/dev/null)
  rm -rf "$G/src"
  $GW start "$G"
done

# --- RAUC: a plain bundle of the same image, its own bus and service ---
R=$W/rauc
mkdir -p "$R/content" "$R/data" "$W/mnt"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$R/key.pem" -out "$R/cert.pem" -days 30 \
  -subj "/CN=rota-bench" -addext "keyUsage=digitalSignature" 2>/dev/null
ln "$W/src/rootfs.img" "$R/content/rootfs.img"
cat > "$R/content/manifest.raucm" <<M
[update]
compatible=rota-bench
version=1.0.0
[bundle]
format=plain
[image.rootfs]
filename=rootfs.img
M
rauc bundle --cert "$R/cert.pem" --key "$R/key.pem" "$R/content" "$R/b.raucb" >/dev/null 2>&1
prealloc "$R/a.img"; prealloc "$R/b.img"
cat > "$R/system.conf" <<C
[system]
compatible=rota-bench
bootloader=noop
mountprefix=$W/mnt
data-directory=$R/data
[keyring]
path=$R/cert.pem
[slot.rootfs.0]
device=$R/a.img
type=raw
bootname=A
[slot.rootfs.1]
device=$R/b.img
type=raw
bootname=B
C
cat > "$R/bus.conf" <<B
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path=$R/bus</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/></policy></busconfig>
B
dbus-daemon --config-file="$R/bus.conf" --nofork --print-address > "$R/bus.addr" &
RAUC_BUS_PID=$!
for _ in $(seq 100); do [[ -s $R/bus.addr ]] && break; sleep 0.05; done
export RAUC_BUS="unix:path=$R/bus"
DBUS_SYSTEM_BUS_ADDRESS=$RAUC_BUS rauc service --conf="$R/system.conf" --override-boot-slot=A > "$R/service.log" 2>&1 &
RAUC_PID=$!
for _ in $(seq 200); do
  DBUS_SYSTEM_BUS_ADDRESS=$RAUC_BUS busctl --system status de.pengutronix.rauc >/dev/null 2>&1 && break
  sleep 0.05
done

run() { # tool -> seconds
  local t0 t1
  case $1 in
    dd)
      prealloc "$W/dd.img"; drop_caches; t0=$(now)
      dd if="$W/src/rootfs.img" of="$W/dd.img" bs=1M conv=notrunc,fsync status=none ;;
    rota|rota-off|rota-f1|rota-8m)
      local G=$W/gw-${1#rota-}
      [[ $1 == rota ]] && G=$W/gw-crc
      drop_caches; t0=$(now)
      (eval "$($GW env "$G")"; "$ROTA" install --force-version "$G/b.rota" >/dev/null) ;;
    rauc)
      drop_caches; t0=$(now)
      DBUS_SYSTEM_BUS_ADDRESS=$RAUC_BUS rauc install "$R/b.raucb" >/dev/null 2>&1 ||
        { echo "rauc install failed:" >&2; tail -20 "$R/service.log" >&2; exit 1; } ;;
  esac
  t1=$(now)
  echo "$t0 $t1" | awk '{ printf "%.4f\n", $2 - $1 }'
}

TOOLS=(dd rota rota-off rota-f1 rota-8m rauc)
declare -A TIMES
for i in $(seq "$RUNS"); do
  for t in "${TOOLS[@]}"; do
    s=$(run "$t")
    TIMES[$t]+="$s "
  done
  echo "round $i: $(for t in "${TOOLS[@]}"; do printf '%s %ss  ' "$t" "$(echo "${TIMES[$t]}" | awk '{print $NF}')"; done)"
done
hwm=$(awk '/VmHWM/{print $2}' "/proc/$(cat "$W/gw-crc/service.pid")/status")
hwm8=$(awk '/VmHWM/{print $2}' "/proc/$(cat "$W/gw-8m/service.pid")/status")
for gw in crc off f1 8m; do
  cmp <(head -c "${SIZE_MIB}M" "$W/gw-$gw/b.img") "$W/src/rootfs.img" || { echo "rota's slot B ($gw) differs from the image" >&2; exit 1; }
done
cmp <(head -c "${SIZE_MIB}M" "$R/b.img") "$W/src/rootfs.img" || { echo "RAUC's slot B differs from the image" >&2; exit 1; }

python3 - "$SIZE_MIB" "$hwm" "${ROTA_BENCH_IMAGE:-random bytes}" "$hwm8" <<P
import statistics, sys
mib, hwm = int(sys.argv[1]), int(sys.argv[2])
times = {$(for t in "${TOOLS[@]}"; do printf '"%s": [%s], ' "$t" "$(echo "${TIMES[$t]}" | sed 's/ *$//; s/ /, /g')"; done)}
print(f"local install of a {mib} MiB image ({sys.argv[3]}), {len(times['dd'])} alternating runs, page cache dropped before each")
print(f"{'tool':10} {'min s':>8} {'median s':>9} {'MB/s (median)':>14}")
best = {}
for t, v in times.items():
    med = statistics.median(v)
    best[t] = med
    print(f"{t:10} {min(v):8.2f} {med:9.2f} {mib * 1.048576 / med:14.1f}")
def ratio(a, b):  # speed of a relative to b, from median times
    return best[b] / best[a]
print(f"rota vs RAUC 1.8 speed:    {ratio('rota', 'rauc'):.2f}x  (target >= 1.5)")
print(f"rota vs dd+fsync speed:    {ratio('rota', 'dd'):.2f}x  (target >= 0.5)")
print(f"rota read-back=off vs dd:  {ratio('rota-off', 'dd'):.2f}x  (target >= 0.7)")
print(f"rota format 2 vs format 1: {ratio('rota', 'rota-f1'):.2f}x  (target >= 1: no slower than raw chunks)")
print(f"8 MiB frames vs format 1:  {ratio('rota-8m', 'rota-f1'):.2f}x")
print(f"rota service peak RSS: {hwm / 1024:.1f} MiB (64 KiB frames), {int(sys.argv[4]) / 1024:.1f} MiB (8 MiB frames)")
P
