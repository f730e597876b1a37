#!/usr/bin/env bash
# Bytes over the air on the issue-12 image pair (benches/ota-image-pair.sh): rota's full
# install and security update, side by side with the real tools' figures on the same
# images (benches/ota-bytes-baselines.sh: zstd -19, rauc, casync, zchunk, xdelta3), and
# the device side of the update: time and the service's peak memory.
#
#   bash benches/ota-bytes.sh [PAIR_DIR]
#
# What rota does here, all through the shipped binary (release build):
#   1. `rota bundle create` of v2 two ways: default (64 KiB frames, for devices on any
#      earlier image) and `--delta-from v1.img` (8 MiB frames,
#      plus patches against v1);
#   2. a simulated gateway (scripts/sim-gateway.sh) with 1 GiB slots, slot A holding v1,
#      served over HTTP by nginx on the loopback; `rota install --dry-run` of each bundle
#      gives the update's bytes, the same on a gateway whose running slot has nothing in
#      common gives the full install's;
#   3. the real install of the --delta-from bundle over HTTP: downloaded bytes as the
#      service counted them, wall time, the service's peak RSS, and slot B compared with
#      v2 byte for byte;
#   4. the same bundle installed for real on the gateway with nothing in common (a full
#      install): wall time, throughput, peak RSS, slot B compared with v2.
# The baselines take ~17 minutes on 2 cores; ROTA_BENCH_BASELINES=FILE uses a table a
# previous run of ota-bytes-baselines.sh printed for the same pair instead.
# Needs: nginx, dbus-daemon, mkenvimage (scripts/setup-deps.sh), and for the baselines
# the tools benches/README-ota-bytes.md lists.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

PAIR=${1:-$(bash benches/ota-image-pair.sh | tail -1)}
[[ -f $PAIR/v1.img && -f $PAIR/v2.img ]] || { echo "no image pair in $PAIR" >&2; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target/bench}
cargo build --release --locked --bin rota >/dev/null
ROTA=$CARGO_TARGET_DIR/release/rota
export ROTA
GW="bash $REPO/scripts/sim-gateway.sh"
W=$(mktemp -d /var/tmp/rota-ota-bytes.XXXXXX)
NGINX_PID=
cleanup() {
  for g in "$W"/gw-*; do [[ -d $g ]] && $GW stop "$g" 2>/dev/null || true; done
  [[ -n $NGINX_PID ]] && kill "$NGINX_PID" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
now() { date +%s.%N; }
SIZE=$(stat -c %s "$PAIR/v2.img")

# 1. Bundles.
mkdir -p "$W/src" "$W/www" "$W/keys"
# A regular file (bundle create refuses links).
cp --reflink=auto "$PAIR/v2.img" "$W/src/rootfs.ext4"
printf '[update]\ncompatible = "acme-gateway"\nversion = "2.0.0"\n[[image]]\nslot-class = "rootfs"\nfile = "rootfs.ext4"\n' > "$W/src/manifest.toml"
(cd "$W/keys" && "$ROTA" keygen --out-dir . --name release >/dev/null)
declare -A BUNDLE_ARGS=(
  [default]=""
  [delta-from-v1]="--delta-from $PAIR/v1.img"
  [delta-from-v1-1m]="--delta-from $PAIR/v1.img --frame-size 1048576"
)
# ROTA_BENCH_KINDS picks bundles (space-separated); ROTA_BENCH_INSTALL the one installed
# for real.
read -r -a KINDS <<<"${ROTA_BENCH_KINDS:-default delta-from-v1}"
INSTALL_KIND=${ROTA_BENCH_INSTALL:-delta-from-v1}
declare -A PACK_SECS
for k in "${KINDS[@]}"; do
  t0=$(now)
  # shellcheck disable=SC2086
  "$ROTA" bundle create "$W/src" "$W/www/$k.rota" --key "$W/keys/release.key.pem" ${BUNDLE_ARGS[$k]} >/dev/null
  PACK_SECS[$k]=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')
done
rm -f "$W/src/rootfs.ext4"

# 2. nginx on the loopback, and two gateways: A holds v1 / A holds unrelated bytes.
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$W/nginx.conf" <<NGX
daemon off; user root; worker_processes 1; pid $W/nginx.pid; error_log $W/nginx-error.log;
events { worker_connections 64; }
http { access_log $W/nginx-access.log; sendfile on;
  server { listen 127.0.0.1:$PORT; root $W/www; } }
NGX
nginx -c "$W/nginx.conf" -p "$W" &
NGINX_PID=$!
for _ in $(seq 200); do curl -sf -o /dev/null -r 0-0 "http://127.0.0.1:$PORT/default.rota" && break; sleep 0.05; done
url() { echo "http://127.0.0.1:$PORT/$1.rota"; }
for g in v1 none; do
  G=$W/gw-$g
  $GW create "$G" --slot-size "$SIZE" >/dev/null
  cp "$W/keys/release.pub.pem" "$G/keys/release.pub.pem"
  [[ $g == v1 ]] && cp --reflink=auto "$PAIR/v1.img" "$G/a.img"
  $GW start "$G" >/dev/null
done
estimate() { # gateway bundle -> download bytes
  (eval "$($GW env "$W/gw-$1")"; "$ROTA" install --dry-run --json --force-version "$(url "$2")") |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["download"])'
}
declare -A FULL UPD
for k in "${KINDS[@]}"; do
  UPD[$k]=$(estimate v1 "$k")
  FULL[$k]=$(estimate none "$k")
done

# Installs $INSTALL_KIND for real on gateway $1 (page cache dropped first), checks slot B
# against v2, and prints: wall seconds, the service's peak RSS (KiB), bytes downloaded and
# bytes reused as the service counted them.
install_for_real() {
  local G=$W/gw-$1 t0 events secs hwm
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  t0=$(now)
  events=$( (eval "$($GW env "$G")"; "$ROTA" install --json --force-version "$(url "$INSTALL_KIND")") )
  secs=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  hwm=$(awk '/VmHWM/{print $2}' "/proc/$(cat "$G/service.pid")/status")
  cmp "$PAIR/v2.img" <(head -c "$SIZE" "$G/b.img") || { echo "slot B of gateway $1 differs from v2" >&2; exit 1; }
  echo "$secs $hwm $(python3 -c '
import json, sys
ev = [json.loads(l) for l in sys.stdin if l.startswith("{")]
p = [e for e in ev if e.get("event") == "progress"][-1]
print(p["bytes_downloaded"], p["bytes_reused"])' <<<"$events")"
}

# 3. The update for real, on the gateway running v1.
# (Assigned first: a failed check then stops the script under set -e.)
R=$(install_for_real v1)
read -r INSTALL_SECS HWM dl reused <<<"$R"
SERVED=$(awk '$9 == 206 || $9 == 200 { s += $10 } END { print s + 0 }' "$W/nginx-access.log")

# 4. The full install for real, same bundle, on the gateway whose running slot has
# nothing in common: the install's throughput with this bundle's frames.
R=$(install_for_real none)
read -r FULL_SECS FULL_HWM FULL_DL _ <<<"$R"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo
echo "pair: $PAIR ($(mib "$SIZE") images)"
echo
echo "| rota bundle | full install | security update (device on v1) | bundle create |"
echo "|---|---|---|---|"
for k in "${KINDS[@]}"; do
  echo "| $k | $(mib "${FULL[$k]}") | $(mib "${UPD[$k]}") | ${PACK_SECS[$k]} s |"
done
echo
echo "update installed for real ($INSTALL_KIND over HTTP, slot B == v2 checked):"
echo "  $INSTALL_SECS s wall, service peak RSS $(awk -v k="$HWM" 'BEGIN { printf "%.1f", k / 1024 }') MiB,"
echo "  $(mib "$dl") of frames and patches downloaded, $(mib "$reused") reused;"
echo "  nginx served $(mib "$SERVED") in all to the dry runs and installs of this run"
echo "full install for real ($INSTALL_KIND over HTTP onto unrelated bytes, slot B == v2 checked):"
echo "  $FULL_SECS s wall ($(awk -v s="$FULL_SECS" -v b="$SIZE" 'BEGIN { printf "%.0f", b / 1048576 / s }') MiB of image per second),\
 service peak RSS $(awk -v k="$FULL_HWM" 'BEGIN { printf "%.1f", k / 1024 }') MiB, $(mib "$FULL_DL") downloaded"
echo
echo "baselines (real tools, same pair):"
if [[ -n ${ROTA_BENCH_BASELINES:-} ]]; then
  echo "(from $ROTA_BENCH_BASELINES)"
  cat "$ROTA_BENCH_BASELINES"
else
  bash benches/ota-bytes-baselines.sh "$PAIR" | sed -n '/^| scheme/,$p'
fi
