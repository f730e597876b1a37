#!/usr/bin/env bash
# A simulated gateway on this machine, for the demo and the benchmarks: the same layout
# as the tests' fixture (tests/support/fixture.rs; tests/fixtures.rs checks that they
# agree) —
#   a.img (slot A, booted) and b.img (slot B), env.txt made into uboot.env by the real
#   mkenvimage with its fw_env.config, cmdline (the kernel command line of a boot of A),
#   keys/{release,other}.{key,pub}.pem made by `rota keygen` (release is trusted), and
#   system.toml naming them (paths relative to it).
#
#   sim-gateway.sh create DIR [--slot-size BYTES] [--dbus|--http|--install 'k = v']
#   sim-gateway.sh start DIR          a private system bus, then `rota service` on it
#   sim-gateway.sh start-service DIR  `rota service` (stderr to DIR/service.log)
#   sim-gateway.sh stop-service DIR   SIGTERM to the service, and waits for it
#   sim-gateway.sh stop DIR           the service and the bus, waited for
#   sim-gateway.sh env DIR            prints the exports that reach it (eval them)
#
# The rota binary is $ROTA (default: `rota` on PATH). Pids are kept in DIR/*.pid.
set -euo pipefail

ROTA=${ROTA:-rota}
# What tests/support/fixture.rs writes (ENV, OPEN_POLICY, system_toml, cmdline).
ENV_TXT='bootcmd=run distro_bootcmd
BOOT_ORDER=A B
BOOT_A_LEFT=3
BOOT_B_LEFT=3
serial=GW-1
'
OPEN_POLICY='<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/><allow eavesdrop="true"/></policy>'

usage() { sed -n '2,19p' "$0" >&2; exit 2; }

create() {
  local dir=$1 size=$((8 << 20)) tables=''
  shift
  while (($#)); do
    case $1 in
      --slot-size) size=$2; shift 2 ;;
      --dbus|--http|--install) tables+=$(printf '\n[%s]\n%s\n' "${1#--}" "$2")$'\n'; shift 2 ;;
      *) usage ;;
    esac
  done
  mkdir -p "$dir/keys"
  dir=$(cd "$dir" && pwd)
  head -c "$size" /dev/urandom > "$dir/a.img"
  rm -f "$dir/b.img"; truncate -s "$size" "$dir/b.img"
  printf '%s' "$ENV_TXT" > "$dir/env.txt"
  mkenvimage -s 0x4000 -o "$dir/uboot.env" "$dir/env.txt"
  echo "$dir/uboot.env 0x0 0x4000" > "$dir/fw_env.config"
  echo "console=ttyAMA0 rota.slot=A" > "$dir/cmdline"
  for key in release other; do
    (cd "$dir" && "$ROTA" keygen --out-dir keys --name "$key" >/dev/null)
  done
  cat > "$dir/system.toml" <<TOML
[system]
compatible = "acme-gateway"
data-dir = "data"
kernel-cmdline = "cmdline"
boot-attempts = 3

[keyring]
paths = ["keys/release.pub.pem"]

[bootloader]
type = "uboot"
fw-env-config = "fw_env.config"

[slot.rootfs.0]
device = "a.img"
bootname = "A"

[slot.rootfs.1]
device = "b.img"
bootname = "B"
TOML
  printf '%s' "$tables" >> "$dir/system.toml"
}

env_of() {
  local dir; dir=$(cd "$1" && pwd)
  echo "export ROTA_CONFIG=$dir/system.toml DBUS_SYSTEM_BUS_ADDRESS=unix:path=$dir/system_bus_socket"
}

# Waits (up to 10 s) for the process in pid file $1 to exit.
wait_pid() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  kill "$2" "$pid" 2>/dev/null || { rm -f "$1"; return 0; }
  for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$1"
}

start_service() {
  local dir; dir=$(cd "$1" && pwd)
  eval "$(env_of "$dir")"
  (cd "$dir" && exec "$ROTA" service </dev/null >/dev/null 2>>service.log) &
  echo $! > "$dir/service.pid"
  for _ in $(seq 200); do
    busctl --system status io.rota >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$dir/service.pid")" 2>/dev/null || break
    sleep 0.05
  done
  echo "rota service did not come up:" >&2; cat "$dir/service.log" >&2; return 1
}

start() {
  local dir; dir=$(cd "$1" && pwd)
  cat > "$dir/bus.conf" <<XML
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$dir/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
$OPEN_POLICY
</busconfig>
XML
  dbus-daemon --config-file="$dir/bus.conf" --fork --print-pid=1 > "$dir/bus.pid" 2>>"$dir/dbus-daemon.log"
  start_service "$dir"
}

cmd=${1:-}; dir=${2:-}
[[ -n $cmd && -n $dir ]] || usage
shift 2
case $cmd in
  create) create "$dir" "$@" ;;
  start) start "$dir" ;;
  start-service) start_service "$dir" ;;
  stop-service) wait_pid "$dir/service.pid" -TERM ;;
  stop) wait_pid "$dir/service.pid" -TERM; wait_pid "$dir/bus.pid" -TERM ;;
  env) env_of "$dir" ;;
  *) usage ;;
esac
