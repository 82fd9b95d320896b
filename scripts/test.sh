#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs unit, property and
# integration tests (real sshd/dockerd/registry/git testbeds, real Kamal).
# Needs root (network namespaces). Testbeds clean up after themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export BERTH_KAMAL="${BERTH_KAMAL:-${BERTH_KAMAL_VENV:-/opt/kamal-venv}/bin/kamal}"
# Every package (the stand-in's own tests too); --no-fail-fast so one failing
# test binary does not hide the failures of the next ones.
# Four test threads: the fleet tests mostly wait on hosts (health checks,
# drains), each in a testbed slot of its own, so they overlap well on two
# cores.
cargo test --workspace --locked --no-fail-fast -- --test-threads="${BERTH_TEST_THREADS:-4}"
