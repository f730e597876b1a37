#!/usr/bin/env bash
# Checks the Yocto layer (yocto-layer/meta-rota) without bitbake (which cannot be
# installed here: it is fetched from git by kas/bitbake-setup):
#  1. oelint-adv on every recipe, class and layer.conf, for every series the layer
#     declares in LAYERSERIES_COMPAT;
#  2. rota-crates.inc is current with Cargo.lock, and its checksums equal the sha256 of
#     the .crate files cargo downloaded (where cargo's cache has them);
#  3. LIC_FILES_CHKSUM matches the source tree, and every file a recipe takes from the
#     rota tree (${S}/...) or from its files/ directory exists;
#  4. scripts/check-yocto-series.py: on every series in LAYERSERIES_COMPAT, S and
#     UNPACKDIR resolve to where that series unpacks the sources.
# Needs: oelint-adv (pip), in PATH, .venv/bin or /work/venv/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
LAYER=yocto-layer/meta-rota
fail() { echo "ci-yocto-lint: $*" >&2; exit 1; }

OELINT=$(command -v oelint-adv || true)
for v in .venv/bin/oelint-adv /work/venv/bin/oelint-adv; do
  [[ -n $OELINT ]] || { [[ -x $v ]] && OELINT=$(realpath "$v"); }
done
[[ -n $OELINT ]] || fail "oelint-adv is missing: pip install oelint-adv (into .venv)"

mapfile -t files < <(cd "$LAYER" && find . -name '*.bb' -o -name '*.bbappend' -o -name '*.bbclass' | sort)
((${#files[@]})) || fail "no recipes or classes in $LAYER"
series=$(sed -n 's/^LAYERSERIES_COMPAT_rota = "\(.*\)"/\1/p' "$LAYER/conf/layer.conf")
[[ -n $series ]] || fail "no LAYERSERIES_COMPAT_rota in $LAYER/conf/layer.conf"

# Suppressed rules, and why:
#  homepageping          makes a network request (no network here)
#  bbclass.underscores   the class is named rota-bundle (like OE-core's core-image); it
#                        exports no functions, so the '-' never reaches a shell name
#  var.bbclassextend     (info) the boot script and fw_env.config recipes are
#                        machine-specific; the rota recipe itself does extend to native
# oelint-constants.json names the BSP layers' machine overrides used (rpi, mx8m-generic-bsp).
for rel in $series; do
  out=$(cd "$LAYER" && "$OELINT" --quiet --release "$rel" \
          --suppress oelint.vars.homepageping \
          --suppress oelint.bbclass.underscores \
          --suppress oelint.var.bbclassextend \
          --constantmods +oelint-constants.json \
          -- conf/layer.conf "${files[@]}" 2>&1) || { echo "$out"; fail "oelint-adv --release $rel failed"; }
  [[ -z $out ]] || { echo "$out"; fail "oelint-adv --release $rel reported findings"; }
  echo "ci-yocto-lint: oelint-adv --release $rel: clean (${#files[@]} files + layer.conf)"
done

bash scripts/gen-crates-inc.sh --check
checked=0
while read -r name version sum; do
  crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$name-$version.crate" 2>/dev/null | head -1 || true)
  [[ -n $crate ]] || continue
  got=$(sha256sum "$crate" | cut -d' ' -f1)
  [[ $got == "$sum" ]] || fail "$name $version: rota-crates.inc says $sum, $crate is $got"
  checked=$((checked + 1))
done < <(sed -n 's/^SRC_URI\[\(.*\)-\([0-9][^-]*\)\.sha256sum\] = "\(.*\)"/\1 \2 \3/p' "$LAYER/recipes-core/rota/rota-crates.inc")
echo "ci-yocto-lint: $checked crate checksums match cargo's downloaded .crate files"
((checked > 0)) || fail "no crate could be checked against cargo's cache (run cargo fetch first)"

# LIC_FILES_CHKSUM: file://PATH;beginline=B;endline=E;md5=SUM against this tree.
while read -r spec; do
  path=${spec%%;*}; path=${path#file://}
  # OE-core's license texts (recipes without sources of their own) are not in this tree.
  [[ $path == '${COMMON_LICENSE_DIR}'/* ]] && { echo "ci-yocto-lint: LIC_FILES_CHKSUM $path is OE-core's"; continue; }
  b=$(sed -n 's/.*beginline=\([0-9]*\).*/\1/p' <<<"$spec"); e=$(sed -n 's/.*endline=\([0-9]*\).*/\1/p' <<<"$spec")
  want=$(sed -n 's/.*md5=\([0-9a-f]*\).*/\1/p' <<<"$spec")
  [[ -f $path ]] || fail "LIC_FILES_CHKSUM names $path, which does not exist"
  if [[ -n $b ]]; then got=$(sed -n "${b},${e:-\$}p" "$path" | md5sum | cut -d' ' -f1); else got=$(md5sum < "$path" | cut -d' ' -f1); fi
  [[ $got == "$want" ]] || fail "LIC_FILES_CHKSUM for $path (lines ${b:-all}-${e:-}): recipe says $want, the tree gives $got ($(sed -n "${b:-1}p" "$path"))"
  echo "ci-yocto-lint: LIC_FILES_CHKSUM $path lines ${b:-1}-${e:-end} ok"
done < <(grep -ho 'file://[^ "]*md5=[0-9a-f]*' "$LAYER"/recipes-*/*/*.inc "$LAYER"/recipes-*/*/*.bb 2>/dev/null | sort -u)

# Files taken from the rota tree (${S}/...) and from the recipes' files/ directories.
missing=0
while read -r rel; do
  compgen -G "$rel" >/dev/null || { echo "ci-yocto-lint: a recipe uses \${S}/$rel, which does not exist" >&2; missing=1; }
done < <(grep -l '^require .*rota-source.inc' "$LAYER"/recipes-*/*/*.bb | xargs grep -hv '^[[:space:]]*#' | grep -o '\${S}/[A-Za-z0-9_./*-]*' | sed 's#^\${S}/##' | sort -u)
for bb in "$LAYER"/recipes-*/*/*.bb; do
  for f in $(grep -v '^[[:space:]]*#' "$bb" | grep '^SRC_URI' | grep -o 'file://[^ ";]*' | sed 's#file://##'); do
    [[ -e "$(dirname "$bb")/files/$f" || -e "$(dirname "$bb")/$(basename "$bb" .bb | sed 's/_[^_]*$//')/$f" ]] ||
      { echo "ci-yocto-lint: $bb fetches file://$f, which is not in its files/ directory" >&2; missing=1; }
  done
done
((missing == 0)) || fail "files referenced by recipes are missing"

# Every claimed series: S and UNPACKDIR as that series' bitbake.conf makes them, and
# every file:// of the recipes and bbappends present (see the script for its limits).
python3 scripts/check-yocto-series.py | tail -1
echo "ci-yocto-lint: OK"
