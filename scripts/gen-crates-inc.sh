#!/usr/bin/env bash
# Writes the Yocto crate list for the rota recipe from Cargo.lock:
#   yocto-layer/meta-rota/recipes-core/rota/rota-crates.inc
# One `crate://crates.io/NAME/VERSION` SRC_URI entry per locked crates.io package, and
# its `SRC_URI[NAME-VERSION.sha256sum]` from the lock file's checksum (the same format
# bitbake's `do_update_crates` writes). Every package in the lock is listed, also the
# ones for other platforms: cargo checks the whole lock when it builds offline.
#
# It also points SRCREV in rota-source.inc at the last commit that changed Cargo.lock
# (committed Cargo.lock only), so the recipe fetches a tree whose lock file is the one
# the crate list was made from.
#
#   scripts/gen-crates-inc.sh            write the files
#   scripts/gen-crates-inc.sh --check    fail if the committed files are out of date
#   scripts/gen-crates-inc.sh --stdout   print instead of writing
set -euo pipefail
cd "$(dirname "$0")/.."

LOCK=Cargo.lock
OUT=yocto-layer/meta-rota/recipes-core/rota/rota-crates.inc
SOURCE_INC=yocto-layer/meta-rota/recipes-core/rota/rota-source.inc

# The commit SRCREV names, and whether its Cargo.lock is the working tree's.
srcrev() { sed -n 's/^SRCREV = "\([0-9a-f]*\)"$/\1/p' "$SOURCE_INC"; }
check_srcrev() {
  local rev; rev=$(srcrev)
  [[ -n $rev ]] || { echo "gen-crates-inc: no SRCREV in $SOURCE_INC" >&2; return 1; }
  if ! git cat-file -e "$rev^{commit}" 2>/dev/null; then
    echo "gen-crates-inc: SRCREV $rev is not in this clone (shallow?); not checked" >&2
    return 0
  fi
  if ! git show "$rev:$LOCK" | cmp -s - "$LOCK"; then
    echo "gen-crates-inc: SRCREV $rev has another $LOCK than this tree; run scripts/gen-crates-inc.sh after committing $LOCK" >&2
    return 1
  fi
  echo "gen-crates-inc: SRCREV $rev has this $LOCK"
}
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
    echo "gen-crates-inc: $OUT matches $LOCK ($(grep -c '^SRC_URI\[' "$OUT") crates)"
    check_srcrev ;;
  "")
    mkdir -p "$(dirname "$OUT")"
    tmp=$(mktemp); generate > "$tmp"; mv "$tmp" "$OUT"; chmod 0644 "$OUT"
    echo "gen-crates-inc: wrote $OUT ($(grep -c '^SRC_URI\[' "$OUT") crates)"
    if git diff --quiet HEAD -- "$LOCK" 2>/dev/null; then
      rev=$(git log -1 --format=%H -- "$LOCK")
      sed -i "s/^SRCREV = \"[0-9a-f]*\"$/SRCREV = \"$rev\"/" "$SOURCE_INC"
      echo "gen-crates-inc: SRCREV = $rev (last commit of $LOCK)"
    else
      echo "gen-crates-inc: $LOCK has uncommitted changes; commit it and run again to set SRCREV" >&2
    fi ;;
  *) echo "usage: $0 [--check|--stdout]" >&2; exit 2 ;;
esac
