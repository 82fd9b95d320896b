#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs unit, property and
# integration tests (real sshd/dockerd/registry/git testbeds, real Kamal).
# Needs root (network namespaces). Testbeds clean up after themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export BERTH_KAMAL="${BERTH_KAMAL:-${BERTH_KAMAL_VENV:-/opt/kamal-venv}/bin/kamal}"
cargo test --locked
cargo test --locked -p kamal-proxy-standin
