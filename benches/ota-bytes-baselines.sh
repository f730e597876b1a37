#!/usr/bin/env bash
# Benchmark (not a test, not run in CI): what the real update tools download for the image
# pair of issue 12 (benches/ota-image-pair.sh), full install of v2 and the security update
# v1 -> v2, printed as one table:
#   zstd -19         the whole v2 image, `zstd -19 -T0` (full install only; -T0 = one
#                    worker per core, so the output is cut into independent jobs and is
#                    a little larger than a single-threaded -19 would be)
#   rauc plain       `rauc bundle` of v2, plain format (a squashfs, mksquashfs defaults:
#                    gzip, 128 KiB blocks); full install = the bundle's size
#   rauc verity      the same in the verity format with `adaptive=block-hash-index`;
#                    full install = the bundle's size; the update is MODELLED (RAUC 1.8
#                    only writes the index; the download happens over HTTP streaming on a
#                    device): every 4 KiB block of v2 whose SHA-256 occurs anywhere in v1
#                    is reused, every 128 KiB squashfs block of the image holding at least
#                    one other 4 KiB block is downloaded at its gzip -9 size, plus the
#                    block-hash index at its gzip -9 size; the dm-verity hash tree and
#                    squashfs metadata reads are left out
#   casync           `casync make` of v1 and of v2 (defaults: 64 KiB average chunks,
#                    zstd); full install = all chunk files of v2 plus its .caibx; update =
#                    chunks of v2 whose id is not among v1's (what `casync extract --seed`
#                    of the old slot fetches) plus the .caibx. Two stores, compared by chunk
#                    id, give the same figures as one shared store.
#   zchunk           `zck` of v1 and of v2 (defaults); full install = v2.zck; update = the
#                    bytes `zck_delta_size v1.zck v2.zck` says it would download
#   xdelta3          `xdelta3 -9 -e -s v1 v2` (a delta made for this one pair; update
#                    only; default 64 MiB source window). With ROTA_BENCH_XDELTA_BIG=1 also
#                    with `-B 1073741824` (the whole old image as the source window).
# Also prints the image's used bytes (dumpe2fs) and the changed packages.
#
#   bash benches/ota-bytes-baselines.sh [PAIR_DIR]
# PAIR_DIR defaults to what benches/ota-image-pair.sh prints (it builds the pair on the
# first run and then only finds it in its cache; no network once the pair exists).
#
# Needs (Debian bookworm packages): zstd, casync, zchunk, xdelta3, rauc, squashfs-tools,
# openssl, e2fsprogs, python3. About 15-25 minutes on 2 cores; every heavy step runs under
# `nice -n 19`. Scratch space: ~4 GiB in ${TMPDIR:-/tmp}.
set -euo pipefail
cd "$(dirname "$0")/.."

PAIR=${1:-$(bash benches/ota-image-pair.sh)}
V1=$PAIR/v1.img
V2=$PAIR/v2.img
for f in "$V1" "$V2"; do [[ -f $f ]] || { echo "ota-bytes-baselines: $f missing" >&2; exit 2; }; done
for t in zstd casync zck zck_delta_size xdelta3 rauc mksquashfs unsquashfs openssl dumpe2fs python3; do
  command -v "$t" >/dev/null || { echo "ota-bytes-baselines: $t missing" >&2; exit 2; }
done

W=$(mktemp -d "${TMPDIR:-/tmp}/ota-bytes.XXXX")
trap 'rm -rf "$W"' EXIT
N="nice -n 19"
declare -A FULL UPD SECS
ROWS=()
t0=0
tick() { t0=$(date +%s); }
tock() { SECS[$1]=$(($(date +%s) - t0)); echo "ota-bytes-baselines: $1 done in ${SECS[$1]} s" >&2; }
size() { stat -c %s "$1"; }
sum_sizes() { # the summed sizes of the files named on stdin (one path a line)
  xargs -r stat -c %s | awk '{s += $1} END {print s + 0}'
}

# The image's used bytes.
read -r bc fb bs < <(dumpe2fs -h "$V2" 2>/dev/null |
  awk -F: '/^Block count/ {c=$2} /^Free blocks/ {f=$2} /^Block size/ {b=$2} END {print c, f, b}')
USED=$(((bc - fb) * bs))
IMG=$(size "$V2")

# zstd -19 of the whole image.
tick
$N zstd -19 -T0 -q -c "$V2" >"$W/v2.img.zst"
FULL[zstd]=$(size "$W/v2.img.zst"); UPD[zstd]=-
rm "$W/v2.img.zst"
ROWS+=(zstd); tock zstd

# RAUC bundles (a throw-away signing key; the signature is a few KiB either way).
$N openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=ota-bytes-bench \
  -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
for fmt in plain verity; do
  tick
  c=$W/rauc-$fmt
  mkdir "$c"
  ln "$V2" "$c/rootfs.ext4" 2>/dev/null || cp --sparse=always "$V2" "$c/rootfs.ext4"
  {
    printf '[update]\ncompatible=rota-bench\nversion=2\n\n[bundle]\nformat=%s\n\n' "$fmt"
    printf '[image.rootfs]\nfilename=rootfs.ext4\n'
    [[ $fmt == verity ]] && printf 'adaptive=block-hash-index\n'
  } >"$c/manifest.raucm"
  $N rauc bundle --cert="$W/cert.pem" --key="$W/key.pem" "$c" "$W/$fmt.raucb" >"$W/rauc-$fmt.log" 2>&1 || {
    echo "ota-bytes-baselines: rauc bundle ($fmt) failed:" >&2; cat "$W/rauc-$fmt.log" >&2; exit 1; }
  FULL[rauc-$fmt]=$(size "$W/$fmt.raucb"); UPD[rauc-$fmt]=-
  ROWS+=("rauc-$fmt"); tock "rauc-$fmt"
done
# The block-hash index RAUC wrote into the verity bundle (none: the model hashes itself).
unsquashfs -q -d "$W/verity-content" "$W/verity.raucb" '*.block-hash-index' >/dev/null 2>&1 || true
INDEX=$(find "$W/verity-content" -name '*.block-hash-index' 2>/dev/null | head -n1)
rm -f "$W"/*.raucb

tick
UPD[rauc-verity]=$($N python3 - "$V1" "$V2" "${INDEX:-}" <<'EOF'
import hashlib, sys, zlib
v1, v2, index = sys.argv[1], sys.argv[2], sys.argv[3]
B, SQ = 4096, 128 * 1024
have = set()
with open(v1, 'rb') as f:
    while True:
        blk = f.read(B)
        if not blk:
            break
        have.add(hashlib.sha256(blk).digest())
def gz(data):
    c = zlib.compressobj(9, zlib.DEFLATED, 15)
    return len(c.compress(data) + c.flush())
total = 0
hashes = []
with open(v2, 'rb') as f:
    while True:
        sq = f.read(SQ)
        if not sq:
            break
        need = False
        for i in range(0, len(sq), B):
            h = hashlib.sha256(sq[i:i + B]).digest()
            hashes.append(h)
            need = need or h not in have
        if need:
            total += gz(sq)
# The index is downloaded too: RAUC's if the bundle has one, else one SHA-256 a block.
idx = open(index, 'rb').read() if index else b''.join(hashes)
total += sum(gz(idx[i:i + SQ]) for i in range(0, len(idx), SQ))
print(total)
EOF
)
tock rauc-adaptive-model

# casync: one store per image, compared by chunk id.
tick
for v in 1 2; do
  $N casync make --store="$W/v$v.castr" "$W/v$v.caibx" "$PAIR/v$v.img" >/dev/null
done
FULL[casync]=$(($(find "$W/v2.castr" -type f -name '*.cacnk' | sum_sizes) + $(size "$W/v2.caibx")))
NEW=$(comm -13 <(find "$W/v1.castr" -name '*.cacnk' -printf '%f\n' | sort) \
  <(find "$W/v2.castr" -name '*.cacnk' -printf '%f\n' | sort) |
  while read -r n; do echo "$W/v2.castr/${n:0:4}/$n"; done | sum_sizes)
UPD[casync]=$((NEW + $(size "$W/v2.caibx")))
rm -rf "$W"/v?.castr
ROWS+=(casync); tock casync

# zchunk.
tick
for v in 1 2; do $N zck -o "$W/v$v.zck" "$PAIR/v$v.img" >/dev/null; done
FULL[zchunk]=$(size "$W/v2.zck")
ZD=$($N zck_delta_size "$W/v1.zck" "$W/v2.zck")
UPD[zchunk]=$(awk '/Would download/ {print $3}' <<<"$ZD")
rm -f "$W"/v?.zck
ROWS+=(zchunk); tock zchunk

# xdelta3.
tick
$N xdelta3 -9 -e -f -s "$V1" "$V2" "$W/v1-v2.vcdiff"
FULL[xdelta3]=-; UPD[xdelta3]=$(size "$W/v1-v2.vcdiff")
rm -f "$W/v1-v2.vcdiff"
ROWS+=(xdelta3); tock xdelta3
if [[ ${ROTA_BENCH_XDELTA_BIG:-0} == 1 ]]; then
  tick
  $N xdelta3 -9 -e -f -B 1073741824 -s "$V1" "$V2" "$W/v1-v2.vcdiff"
  FULL[xdelta3-B1G]=-; UPD[xdelta3-B1G]=$(size "$W/v1-v2.vcdiff")
  rm -f "$W/v1-v2.vcdiff"
  ROWS+=(xdelta3-B1G); tock xdelta3-B1G
fi

mib() { [[ $1 == - ]] && echo "—" || awk -v b="$1" 'BEGIN {printf "%.1f MiB (%d B)", b / 1048576, b}'; }
declare -A LABEL=(
  [zstd]='`zstd -19 -T0` of the whole v2 image'
  [rauc-plain]='RAUC bundle, plain (`rauc bundle`)'
  [rauc-verity]='RAUC bundle, verity + adaptive block-hash-index (update modelled)'
  [casync]='`casync make` (chunk store; new chunks + .caibx)'
  [zchunk]='`zck` + `zck_delta_size`'
  [xdelta3]='`xdelta3 -9 -e -s v1 v2`'
  [xdelta3-B1G]='`xdelta3 -9 -e -B 1073741824 -s v1 v2`'
)
CHANGED=$(wc -l <"$PAIR/changed.packages")
echo
echo "pair: $PAIR"
echo "image: $(mib "$IMG"), used $(mib "$USED"); $CHANGED packages changed v1 -> v2"
echo
echo "| scheme | full install | security update | time |"
echo "|---|---|---|---|"
for r in "${ROWS[@]}"; do
  t=${SECS[$r]}
  [[ $r == rauc-verity ]] && t="$t s + ${SECS[rauc-adaptive-model]}"
  echo "| ${LABEL[$r]} | $(mib "${FULL[$r]}") | $(mib "${UPD[$r]}") | $t s |"
done
