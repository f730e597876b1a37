#!/usr/bin/env bash
# The ARM part of CI:
#  1. release builds for aarch64 (glibc), armv7 hard-float (glibc) and aarch64 musl
#     (static, for old-glibc boards); prints each stripped size (target/arm-sizes.txt)
#     and fails if the aarch64 binary is over 5 MiB; runs each under qemu-user once;
#  2. the test suite under qemu-user (runner via CARGO_TARGET_<TRIPLE>_RUNNER; tests
#     that start rota binaries prefix them with ROTA_TEST_RUNNER):
#       aarch64: every test;
#       armv7:   the tests where 32-bit matters: unit tests, packaging (offsets past
#                4 GiB, env bytes), interop_env, install_engine, dbus_policy,
#                interop_openssl (ed25519 on the 32-bit backend). dbus_service (CLI and
#                D-Bus plumbing, 64 MiB resume test) and uboot_boot (U-Boot runs in
#                qemu-system either way) add ~2 min under qemu-arm and exercise no
#                word-size-dependent code beyond what the others cover; set
#                ROTA_ARM_FULL=1 to run them too.
# Test builds use the dev profile without debug info, with the hashing and signature
# crates optimized (their debug builds make a 64 MiB install take minutes under
# emulation).
# Needs: gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross
#        libc6-dev-armhf-cross qemu-user, rustup (targets are added if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_AARCH64_BYTES=$((5 * 1024 * 1024))
BUDGET_SECS=480
RELEASE_TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl)
declare -A RUNNER=(
  [aarch64-unknown-linux-gnu]="qemu-aarch64 -L /usr/aarch64-linux-gnu"
  [armv7-unknown-linux-gnueabihf]="qemu-arm -L /usr/arm-linux-gnueabihf"
  [aarch64-unknown-linux-musl]="qemu-aarch64"
)
declare -A STRIP=(
  [aarch64-unknown-linux-gnu]=aarch64-linux-gnu-strip
  [armv7-unknown-linux-gnueabihf]=arm-linux-gnueabihf-strip
  [aarch64-unknown-linux-musl]=aarch64-linux-gnu-strip
)
ARMV7_TESTS=(--lib --test packaging --test interop_env --test install_engine --test dbus_policy --test interop_openssl)

fail() { echo "ci-arm: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || fail "$1 is missing: apt-get install $2"; }
need aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
need arm-linux-gnueabihf-gcc gcc-arm-linux-gnueabihf
need qemu-aarch64 qemu-user
need qemu-arm qemu-user
need readelf binutils
[[ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ]] || fail "aarch64 glibc missing: apt-get install libc6-dev-arm64-cross"
[[ -e /usr/arm-linux-gnueabihf/lib/libc.so.6 ]] || fail "armhf glibc missing: apt-get install libc6-dev-armhf-cross"

start=$SECONDS
phase() { echo "ci-arm: [$((SECONDS - start))s] $*"; }

installed=$(rustup target list --installed)
missing=()
for t in "${RELEASE_TARGETS[@]}"; do grep -qx "$t" <<<"$installed" || missing+=("$t"); done
if ((${#missing[@]})); then
  phase "rustup target add ${missing[*]}"
  rustup target add "${missing[@]}"
fi

phase "release builds: ${RELEASE_TARGETS[*]}"
cargo build --release --locked $(printf -- '--target %s ' "${RELEASE_TARGETS[@]}")

: > target/arm-sizes.txt
for t in "${RELEASE_TARGETS[@]}"; do
  bin=target/$t/release/rota
  "${STRIP[$t]}" -o "target/$t/release/rota.stripped" "$bin"
  bytes=$(stat -c %s "target/$t/release/rota.stripped")
  if LC_ALL=C readelf -l "$bin" | grep -q 'Requesting program interpreter'; then link="dynamically linked"; else link="statically linked"; fi
  # shellcheck disable=SC2086
  version=$(${RUNNER[$t]} "$bin" --version) || fail "$t: the release binary does not run under ${RUNNER[$t]}"
  printf '%-32s %9d bytes  %5.2f MiB  %-18s %s\n' "$t" "$bytes" "$(awk -v b="$bytes" 'BEGIN { print b / 1048576 }')" "$link" "$version" | tee -a target/arm-sizes.txt
  if [[ $t == aarch64-unknown-linux-gnu ]] && ((bytes > MAX_AARCH64_BYTES)); then
    fail "the aarch64 binary is $bytes bytes, over the 5 MiB limit ($MAX_AARCH64_BYTES)"
  fi
  if [[ $t == *-musl ]] && [[ $link != "statically linked" ]]; then
    fail "$t: expected a static binary, but it names a program interpreter (readelf -l $bin)"
  fi
done

# Dev profile for the test builds (see the header).
export CARGO_PROFILE_DEV_DEBUG=0
HOT=()
for c in sha2 crc32fast ring curve25519-dalek ed25519-dalek; do
  HOT+=(--config "profile.dev.package.$c.opt-level=3")
done

test_env() { # triple → the runner variables for it
  local var
  var=CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$1")_RUNNER
  echo "$var=${RUNNER[$1]}" "ROTA_TEST_RUNNER=${RUNNER[$1]}"
}
ARMV7_SELECTION=("${ARMV7_TESTS[@]}")
[[ ${ROTA_ARM_FULL:-0} == 1 ]] && ARMV7_SELECTION=()

# One build for both targets (keeps both cores busy), then both suites side by side:
# much of their time is qemu start-up and waiting on services, not CPU.
phase "test builds: aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf"
cargo test --locked "${HOT[@]}" --no-run --target aarch64-unknown-linux-gnu --target armv7-unknown-linux-gnueabihf

logs=target/arm-tests
mkdir -p "$logs"
phase "cargo test --target aarch64-unknown-linux-gnu (all) under ${RUNNER[aarch64-unknown-linux-gnu]}"
# shellcheck disable=SC2046
env $(test_env aarch64-unknown-linux-gnu) cargo test --locked "${HOT[@]}" --no-fail-fast \
  --target aarch64-unknown-linux-gnu > "$logs/aarch64.log" 2>&1 &
a64=$!
phase "cargo test --target armv7-unknown-linux-gnueabihf ${ARMV7_SELECTION[*]:-(all)} under ${RUNNER[armv7-unknown-linux-gnueabihf]}"
# shellcheck disable=SC2046
env $(test_env armv7-unknown-linux-gnueabihf) cargo test --locked "${HOT[@]}" --no-fail-fast \
  --target armv7-unknown-linux-gnueabihf "${ARMV7_SELECTION[@]}" > "$logs/armv7.log" 2>&1 &
arm=$!
rc_a64=0; wait "$a64" || rc_a64=$?
rc_arm=0; wait "$arm" || rc_arm=$?
for t in aarch64 armv7; do
  echo "---- $t ($logs/$t.log)"
  grep -E '^(     Running|test result:|failures:|    [a-z_:]+$)|FAILED|panicked' "$logs/$t.log" || true
done
((rc_a64 == 0)) || { sed -n '/^failures:/,$p' "$logs/aarch64.log" | head -80; fail "aarch64 tests failed"; }
((rc_arm == 0)) || { sed -n '/^failures:/,$p' "$logs/armv7.log" | head -80; fail "armv7 tests failed"; }

took=$((SECONDS - start))
phase "done"
cat target/arm-sizes.txt
if ((took > BUDGET_SECS)); then
  echo "ci-arm: note: took ${took}s, over the ${BUDGET_SECS}s budget (cold caches?)"
fi
echo "ci-arm: OK (${took}s)"
