#!/usr/bin/env bash
# Builds the kamal-proxy stand-in (testbed/kamal-proxy) as a static binary for
# this machine's triple (the image runs here, so arm64 hosts get arm64) and
# prints its path. Static because the image is FROM scratch: no libc in it.
set -euo pipefail
cd "$(dirname "$0")/.."
triple=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$triple" ] || { echo "build-standin: no host triple in rustc -vV" >&2; exit 1; }
RUSTFLAGS=-Ctarget-feature=+crt-static \
  cargo build --quiet --release --locked -p kamal-proxy-standin --target "$triple"
echo "${CARGO_TARGET_DIR:-$PWD/target}/$triple/release/kamal-proxy"
