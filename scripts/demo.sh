#!/usr/bin/env bash
# The main job on a local embedded fleet: brings up 3 real hosts (network
# namespaces with their own sshd and dockerd), a registry with the demo images
# and the kamal-proxy stand-in, then runs berth on examples/demo: validate the
# Kamal config and render, per host, exactly what must run there.
# Leaves the fleet up to explore; `target/release/berth-testbed down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --quiet --release --locked --bins
(cd testbed/kamal-proxy && RUSTFLAGS=-Ctarget-feature=+crt-static \
  cargo build --quiet --release --locked --target x86_64-unknown-linux-gnu)
bin=target/release
$bin/berth-testbed up 3
$bin/berth-testbed images --proxy-binary testbed/kamal-proxy/target/x86_64-unknown-linux-gnu/release/kamal-proxy >/dev/null
echo
echo "== berth validate"
$bin/berth validate -c examples/demo/config/deploy.yml
echo
echo "== berth render (desired state per host; secrets are never printed)"
$bin/berth render -c examples/demo/config/deploy.yml
echo
echo "The fleet stays up: ssh -i /var/tmp/berth-testbed/0/client/.ssh/id_ed25519 root@10.210.0.11"
echo "Tear it down with: $bin/berth-testbed down"
