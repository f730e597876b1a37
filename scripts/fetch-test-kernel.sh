#!/usr/bin/env bash
# Fetches Debian bookworm's arm64 kernel for tests/uboot_kernel.rs and prints the path of
# its uncompressed Image (Debian's arm64 vmlinuz is an Image: U-Boot starts it with booti).
#
# apt-get runs with a private state directory and APT::Architecture=arm64, so the host's
# apt configuration is not touched (no dpkg --add-architecture). The Image is cached by
# package version under ${ROTA_CACHE_DIR:-~/.cache/rota}/kernel/<version>/Image; later
# calls print the cached file without going to the network (--refresh resolves the
# newest version again).
set -euo pipefail
cache=${ROTA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rota}/kernel
current=$cache/current
mkdir -p "$cache"
# One fetch at a time (test binaries run side by side).
exec 9>"$cache/.lock"
flock 9
if [[ ${1:-} != --refresh && -s $current/Image ]]; then
  readlink -f "$current/Image"
  exit 0
fi
apt_dir=$cache/apt
mkdir -p "$apt_dir"/{lists/partial,archives/partial,etc} "$cache"
: > "$apt_dir/status"
sources=$(ls /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -1 || true)
[[ -n $sources ]] || { echo "fetch-test-kernel: no apt sources on this machine" >&2; exit 1; }
opts=(
  -o "APT::Architecture=arm64" -o "APT::Architectures::=arm64"
  -o "Dir::State=$apt_dir" -o "Dir::State::lists=$apt_dir/lists" -o "Dir::State::status=$apt_dir/status"
  -o "Dir::Cache=$apt_dir" -o "Dir::Cache::archives=$apt_dir/archives"
  -o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=/etc/apt/sources.list.d"
  -o "Acquire::Languages=none" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
)
apt-get "${opts[@]}" -qq update >&2
# linux-image-arm64 is the metapackage; it depends on the versioned kernel package.
pkg=$(apt-cache "${opts[@]}" depends linux-image-arm64 | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-arm64\).*/\1/p' | head -1)
[[ -n $pkg ]] || { echo "fetch-test-kernel: cannot resolve linux-image-arm64" >&2; exit 1; }
ver=$(apt-cache "${opts[@]}" show "$pkg" | sed -n 's/^Version: //p' | head -1)
dest=$cache/$pkg-$ver
if [[ ! -s $dest/Image ]]; then
  work=$(mktemp -d "$cache/.fetch.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get "${opts[@]}" -qq download "$pkg:arm64" >&2)
  dpkg-deb --fsys-tarfile "$work"/*.deb | tar -x -C "$work" --wildcards './boot/vmlinuz-*'
  img=$(ls "$work"/boot/vmlinuz-* | head -1)
  # An arm64 Image carries "ARM\x64" at offset 56.
  [[ $(dd if="$img" bs=1 skip=56 count=4 status=none | od -An -c | tr -d ' ') == 'ARMd' ]] ||
    { echo "fetch-test-kernel: $img is not an uncompressed arm64 Image" >&2; exit 1; }
  mkdir -p "$dest"
  mv "$img" "$dest/Image.tmp" && mv "$dest/Image.tmp" "$dest/Image"
fi
ln -sfn "$dest" "$current.tmp" && mv -T "$current.tmp" "$current"
rm -rf "$apt_dir/lists"
readlink -f "$current/Image"
