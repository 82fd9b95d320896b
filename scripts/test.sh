#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs unit, property and
# integration tests (real sshd/dockerd/registry/git testbeds, real Kamal).
# Needs root (network namespaces). Testbeds clean up after themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export BERTH_KAMAL="${BERTH_KAMAL:-${BERTH_KAMAL_VENV:-/opt/kamal-venv}/bin/kamal}"
threads="${BERTH_TEST_THREADS:-4}"
# Every test binary of every package (the stand-in's own tests too), built
# once; then the fleet binary (real hosts: minutes) runs beside all the
# others (seconds), whose output is kept and printed after the fleet's.
# Each runs to its end (--no-fail-fast), so one failing binary does not hide
# the failures of the next; the exit status says whether any failed.
# Four test threads: the fleet tests mostly wait on hosts (health checks,
# drains), each in a testbed slot of its own, so they overlap well on two
# cores.
cargo test --workspace --locked --no-run
others_log=$(mktemp)
trap 'rm -f "$others_log"' EXIT
{
  status=0
  cargo test --workspace --locked --no-fail-fast --lib --bins --test offline \
    -- --test-threads="$threads" || status=$?
  cargo test --workspace --locked --doc || status=$?
  exit "$status"
} >"$others_log" 2>&1 &
others_pid=$!
fleet_status=0
cargo test -p berth --locked --test fleet -- --test-threads="$threads" || fleet_status=$?
others_status=0
wait "$others_pid" || others_status=$?
echo "== unit, offline, stand-in and doc tests (exit $others_status)"
cat "$others_log"
if [ "$fleet_status" != 0 ] || [ "$others_status" != 0 ]; then
  echo "test.sh: fleet tests exit $fleet_status, the others exit $others_status" >&2
  exit 1
fi
