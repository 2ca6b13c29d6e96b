#!/usr/bin/env bash
# Build the Debian packages (amd64, arm64, armhf) of the production binary (no demo feature)
# with cargo-deb and Debian's cross gcc. Output: target/<triple>/debian/*.deb (amd64:
# target/debian/*.deb). Prints each package and the stripped binary's size.
#
#   scripts/package.sh                  # all three
#   scripts/package.sh amd64 arm64      # some
#
# Needs: cargo install cargo-deb; for ARM: apt-get install gcc-aarch64-linux-gnu
#        libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || { echo "cargo-deb missing: cargo install cargo-deb --locked" >&2; exit 2; }

arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64 armhf)
for arch in "${arches[@]}"; do
  case "$arch" in
    amd64) target=() ; bin=target/release/alertbridge ;;
    arm64) target=(--target aarch64-unknown-linux-gnu) ; bin=target/aarch64-unknown-linux-gnu/release/alertbridge ;;
    armhf) target=(--target armv7-unknown-linux-gnueabihf) ; bin=target/armv7-unknown-linux-gnueabihf/release/alertbridge ;;
    *) echo "unknown arch '$arch' (amd64 | arm64 | armhf)" >&2; exit 2 ;;
  esac
  [ ${#target[@]} -eq 0 ] || rustup target add "${target[1]}" >/dev/null
  echo "== $arch"
  deb=$(cargo deb -p alertbridge "${target[@]}" | tail -n 1)
  echo "$deb  binary $(stat -c %s "$bin") bytes (stripped, no demo)"
done
