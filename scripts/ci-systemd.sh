#!/usr/bin/env bash
# Checks the systemd units rota ships (systemd/) without a running systemd:
#  1. `systemd-analyze verify` on every unit, in a scratch root that holds the stock
#     units of the host (for the targets ours refer to) and rota's files at the paths the
#     packages install them to (verify insists that ExecStart= programs exist). Any
#     warning counts as a failure: verify only warns about unknown keys.
#  2. `systemd-analyze security --offline=yes` on rota.service: prints the exposure
#     score and fails above 2.5 (the mark-good unit's score is printed for information).
#  3. The D-Bus activation file names the alias rota.service declares.
# Needs: systemd (systemd-analyze; no systemd has to run).
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE=2.5
command -v systemd-analyze >/dev/null || { echo "ci-systemd: systemd-analyze is missing: apt-get install systemd" >&2; exit 1; }
stock=/usr/lib/systemd/system
[[ -e $stock/sysinit.target ]] || stock=/lib/systemd/system
[[ -e $stock/sysinit.target ]] || { echo "ci-systemd: no stock systemd units found (apt-get install systemd)" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system"
cp -a "$stock" "$root/usr/lib/systemd/system"
# rota's files where the packages put them (the binary is a stand-in: verify only needs
# an executable there).
install -D -m 0755 /dev/null "$root/usr/bin/rota"
install -D -m 0755 systemd/rota-health-check "$root/usr/libexec/rota/rota-health-check"
units=()
for u in systemd/*.service systemd/*.target systemd/*.timer systemd/*.path; do
  [[ -e $u ]] || continue
  install -m 0644 "$u" "$root/usr/lib/systemd/system/"
  units+=("$(basename "$u")")
done
((${#units[@]})) || { echo "ci-systemd: no units in systemd/" >&2; exit 1; }

verify() { # unit... → prints findings, returns non-zero on any finding
  local out rc=0
  out=$(systemd-analyze verify --root="$root" --man=no "$@" 2>&1) || rc=$?
  [[ -n $out ]] && echo "$out"
  [[ $rc -eq 0 && -z $out ]]
}

# Self-check: a unit with a typo and a missing program must be reported, or this
# script proves nothing.
sed -e 's/^WatchdogSec=/WatchdogSex=/' -e 's#^ExecStart=/usr/bin/rota#ExecStart=/usr/bin/rota-missing#' \
  systemd/rota.service > "$root/usr/lib/systemd/system/rota-broken-selfcheck.service"
if verify rota-broken-selfcheck.service >/dev/null; then
  echo "ci-systemd: verify accepted a broken unit; the check is not working" >&2; exit 1
fi
rm "$root/usr/lib/systemd/system/rota-broken-selfcheck.service"

echo "ci-systemd: systemd-analyze verify ${units[*]}"
verify "${units[@]}" || { echo "ci-systemd: unit verification failed" >&2; exit 1; }

# D-Bus activation: dbus/io.rota.service must name an alias of rota.service.
want=$(sed -n 's/^SystemdService=//p' dbus/io.rota.service)
grep -qx "Alias=$want" systemd/rota.service ||
  { echo "ci-systemd: dbus/io.rota.service starts '$want', which rota.service does not declare (Alias=)" >&2; exit 1; }

score() { systemd-analyze security --offline=yes "$1" 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: //p'; }
for u in systemd/rota-mark-good.service; do
  echo "ci-systemd: exposure $(basename "$u"): $(score "$u") (informational)"
done
s=$(score systemd/rota.service)
[[ -n $s ]] || { echo "ci-systemd: systemd-analyze security printed no score" >&2; exit 1; }
echo "ci-systemd: exposure rota.service: $s (must be <= $MAX_EXPOSURE)"
awk -v s="${s%% *}" -v max="$MAX_EXPOSURE" 'BEGIN { exit !(s + 0 <= max + 0) }' ||
  { systemd-analyze security --offline=yes systemd/rota.service | grep '✗' >&2; echo "ci-systemd: rota.service exposure $s is above $MAX_EXPOSURE" >&2; exit 1; }
echo "ci-systemd: OK"
