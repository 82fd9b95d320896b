#!/usr/bin/env bash
# The main job on a local embedded fleet: brings up 3 real hosts (network
# namespaces with their own sshd and dockerd), a registry with the demo images
# and the kamal-proxy stand-in; then berth, on the Kamal config in
# examples/demo: validate it, plan against the empty fleet, deploy it, show
# the fleet in sync, roll a new version through the proxy, and heal a
# container stopped by hand.
# Leaves the fleet up to explore; `target/release/berth-testbed down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --quiet --release --locked --bins
(cd testbed/kamal-proxy && RUSTFLAGS=-Ctarget-feature=+crt-static \
  cargo build --quiet --release --locked --target x86_64-unknown-linux-gnu)
bin=$PWD/target/release
$bin/berth-testbed down >/dev/null 2>&1 || true
$bin/berth-testbed up 3
$bin/berth-testbed images --proxy-binary testbed/kamal-proxy/target/x86_64-unknown-linux-gnu/release/kamal-proxy >/dev/null
known_hosts=/var/tmp/berth-testbed/0/client/.ssh/known_hosts
cd examples/demo
berth() { "$bin/berth" "$@" --known-hosts "$known_hosts"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "berth validate"
"$bin/berth" validate
step "berth reconcile --dry-run on empty hosts (exit 2: changes pending)"
berth reconcile --dry-run || echo "(exit $?)"
step "berth reconcile: deploy"
berth reconcile
step "served through kamal-proxy on every host"
for h in 10.210.0.11 10.210.0.12; do printf '%s: %s' "$h" "$(curl -s -H 'Host: demo.test' "http://$h/")"; echo; done
step "berth reconcile --dry-run (exit 0: in sync)"
berth reconcile --dry-run
step "a new version (as a config PR bumping x-berth.version would): rolling, health-gated"
berth reconcile --app-version v2
for h in 10.210.0.11 10.210.0.12; do printf '%s: %s' "$h" "$(curl -s -H 'Host: demo.test' "http://$h/")"; echo; done
step "drift by hand: docker stop on one host; berth sees it and heals it"
docker -H unix:///var/tmp/berth-testbed/0/hosts/h2/docker.sock stop demo-web-v2 >/dev/null
berth reconcile --dry-run --app-version v2 || echo "(exit $?)"
berth reconcile --app-version v2
step "real Kamal reads the fleet berth manages"
kamal_bin="${BERTH_KAMAL:-/opt/kamal-venv/bin/kamal}"
HOME=/var/tmp/berth-testbed/0/client "$kamal_bin" app version -q 2>/dev/null || HOME=/var/tmp/berth-testbed/0/client "$kamal_bin" app version
echo
echo "The fleet stays up: ssh -i /var/tmp/berth-testbed/0/client/.ssh/id_ed25519 root@10.210.0.11"
echo "Tear it down with: $bin/berth-testbed down"
