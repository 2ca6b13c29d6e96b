#!/usr/bin/env bash
# Cross-build alertbridge for the ARM gateways and run the target-independent unit tests under
# qemu-user, with Debian's cross gcc (no Docker: `cross` is for users who have it, cross.toml).
#
#   scripts/cross-test.sh                 # aarch64 and armv7
#   scripts/cross-test.sh aarch64         # one of them
#
# Needs: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf \
#        libc6-dev-armhf-cross qemu-user ; rustup target add <triple>.
# Linkers and qemu runners are set in .cargo/config.toml. The WAL's crash tests re-execute the
# test binary as a child: ALERTBRIDGE_TEST_RUNNER tells them which emulator to put in front.
set -euo pipefail
cd "$(dirname "$0")/.."

arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(aarch64 armv7)

for arch in "${arches[@]}"; do
  case "$arch" in
    aarch64) triple=aarch64-unknown-linux-gnu;   qemu="qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
    armv7)   triple=armv7-unknown-linux-gnueabihf; qemu="qemu-arm -L /usr/arm-linux-gnueabihf" ;;
    *) echo "unknown arch '$arch' (aarch64 | armv7)" >&2; exit 2 ;;
  esac
  rustup target add "$triple" >/dev/null
  echo "== $arch: release binary (production build, no demo)"
  cargo build --release --target "$triple" -p alertbridge --no-default-features --bin alertbridge
  ls -l "target/$triple/release/alertbridge"
  echo "== $arch: WAL, payload and genesys unit tests under qemu-user"
  ALERTBRIDGE_TEST_RUNNER="$qemu" \
    cargo test --release --target "$triple" -p alertbridge-wal -p alertbridge-payload \
      -p alertbridge-genesys --lib
done
echo "== cross OK: ${arches[*]}"
