#!/usr/bin/env bash
# Writes the Yocto crate list for the rota recipe from Cargo.lock:
#   yocto-layer/meta-rota/recipes-core/rota/rota-crates.inc
# One `crate://crates.io/NAME/VERSION` SRC_URI entry per locked crates.io package, and
# its `SRC_URI[NAME-VERSION.sha256sum]` from the lock file's checksum (the same format
# bitbake's `do_update_crates` writes). Every package in the lock is listed, also the
# ones for other platforms: cargo checks the whole lock when it builds offline.
#
#   scripts/gen-crates-inc.sh            write the file
#   scripts/gen-crates-inc.sh --check    fail if the committed file is out of date
#   scripts/gen-crates-inc.sh --stdout   print instead of writing
set -euo pipefail
cd "$(dirname "$0")/.."

LOCK=Cargo.lock
OUT=yocto-layer/meta-rota/recipes-core/rota/rota-crates.inc
[[ -f $LOCK ]] || { echo "gen-crates-inc: $LOCK not found" >&2; exit 1; }

generate() {
  awk -v lock="$LOCK" '
    function flush() {
      if (name == "") return
      if (source == "") { name = ""; return }             # a path package: the workspace itself
      if (source != "registry+https://github.com/rust-lang/crates.io-index") {
        printf "gen-crates-inc: %s %s comes from %s; only crates.io packages can be fetched as crate://\n", name, version, source > "/dev/stderr"
        bad = 1
      } else if (length(checksum) != 64 || checksum !~ /^[0-9a-f]+$/) {   # (no {64}: mawk lacks intervals)
        printf "gen-crates-inc: %s %s has no sha256 checksum in %s (line %d)\n", name, version, lock, line > "/dev/stderr"
        bad = 1
      } else {
        n++; names[n] = name; versions[n] = version; sums[n] = checksum
      }
      name = ""
    }
    /^\[\[package\]\]/ { flush(); name = "-"; source = ""; checksum = ""; version = ""; line = NR; next }
    /^\[/ { flush(); next }
    name != "" && /^name = "/     { v = $0; sub(/^name = "/, "", v); sub(/"$/, "", v); name = v; next }
    name != "" && /^version = "/  { v = $0; sub(/^version = "/, "", v); sub(/"$/, "", v); version = v; next }
    name != "" && /^source = "/   { v = $0; sub(/^source = "/, "", v); sub(/"$/, "", v); source = v; next }
    name != "" && /^checksum = "/ { v = $0; sub(/^checksum = "/, "", v); sub(/"$/, "", v); checksum = v; next }
    END {
      flush()
      if (bad) exit 1
      if (n == 0) { print "gen-crates-inc: no crates.io packages in " lock > "/dev/stderr"; exit 1 }
      print "# Generated from Cargo.lock by scripts/gen-crates-inc.sh; do not edit."
      print "# Regenerate after every Cargo.lock change (CI checks it is current)."
      print ""
      print "SRC_URI += \"\\"
      for (i = 1; i <= n; i++) printf "    crate://crates.io/%s/%s \\\n", names[i], versions[i]
      print "\""
      print ""
      for (i = 1; i <= n; i++) printf "SRC_URI[%s-%s.sha256sum] = \"%s\"\n", names[i], versions[i], sums[i]
    }
  ' "$LOCK"
}

case "${1:-}" in
  --stdout) generate ;;
  --check)
    tmp=$(mktemp); trap 'rm -f "$tmp"' EXIT
    generate > "$tmp"
    if ! cmp -s "$tmp" "$OUT"; then
      echo "gen-crates-inc: $OUT does not match $LOCK; run scripts/gen-crates-inc.sh" >&2
      diff -u "$OUT" "$tmp" | head -20 >&2 || true
      exit 1
    fi
    echo "gen-crates-inc: $OUT matches $LOCK ($(grep -c '^SRC_URI\[' "$OUT") crates)" ;;
  "")
    mkdir -p "$(dirname "$OUT")"
    tmp=$(mktemp); generate > "$tmp"; mv "$tmp" "$OUT"; chmod 0644 "$OUT"
    echo "gen-crates-inc: wrote $OUT ($(grep -c '^SRC_URI\[' "$OUT") crates)" ;;
  *) echo "usage: $0 [--check|--stdout]" >&2; exit 2 ;;
esac
