#!/usr/bin/env bash
# The main job on a local embedded fleet, in one command. Brings up 3 real
# hosts (network namespaces with their own sshd and dockerd), a registry with
# the demo images and the kamal-proxy stand-in, and a Git repo holding the
# Kamal config of examples/demo. Then:
#   1. berth validates the config and plans against the empty fleet (exit 2);
#   2. `berth run` follows the repo: it deploys v1, serving the status page
#      at http://127.0.0.1:9090/ and metrics at /metrics;
#   3. a commit bumping x-berth.version to v2 (a merged config PR) rolls out,
#      health-gated through kamal-proxy;
#   4. a container stopped by hand is seen (docker events) and healed;
#   5. real Kamal reads the fleet berth manages.
# berth and the fleet stay up to explore; `target/release/berth-testbed down`
# stops both. Non-interactive; CI runs it to the end (scripts/demo-check.sh,
# with BERTH_DEMO_PROFILE=dev to reuse the test build).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
profile="${BERTH_DEMO_PROFILE:-release}"
cargo build --quiet --profile "$profile" --locked -p berth -p berth-testbed --bins
proxy_bin=$(scripts/build-standin.sh)
root=$PWD
# Cargo names the dev profile's directory `debug`.
bin=${CARGO_TARGET_DIR:-$root/target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
listen="${BERTH_DEMO_LISTEN:-127.0.0.1:9090}"
"$bin"/berth-testbed down >/dev/null 2>&1 || true
"$bin"/berth-testbed up 3
"$bin"/berth-testbed images --proxy-binary "$proxy_bin" >/dev/null
slot=/var/tmp/berth-testbed/0
known_hosts=$slot/client/.ssh/known_hosts
hosts=(10.210.0.11 10.210.0.12 10.210.0.13)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
api() { curl -fsS "http://$listen$1"; }
# Poll (no fixed sleeps): until "$@" succeeds, at most $limit seconds.
until_true() {
  local limit=$1; shift
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || { echo "timed out waiting for: $*" >&2; tail -20 "$slot/demo/berth.log" >&2; exit 1; }
    sleep 0.3
  done
}
serves() { for h in "${hosts[@]:0:2}"; do [ "$(curl -s -H 'Host: demo.test' "http://$h/")" = "$1" ] || return 1; done; }
show_served() { for h in "${hosts[@]:0:2}"; do printf '  %s: %s\n' "$h" "$(curl -s -H 'Host: demo.test' "http://$h/")"; done; }
in_sync() { api /api/v1/apps | grep -q '"in_sync":true'; }

# The config repo: the testbed's bare repo, pushed from a work tree.
work=$slot/demo/work
mkdir -p "$work"
cp -r examples/demo/. "$work/"
git_() { git -C "$work" -c user.name=demo -c user.email=demo@berth.test "$@"; }
git_ init -q -b main
git_ add -A
git_ commit -qm "demo app v1"
git_ push -q "file://$slot/git/app.git" main

step "berth validate"
(cd "$work" && "$bin"/berth validate)
step "berth reconcile --dry-run on empty hosts (exit 2: changes pending)"
(cd "$work" && "$bin"/berth reconcile --dry-run --known-hosts "$known_hosts") || echo "(exit $?)"

step "berth run: follow the repo, deploy, serve the status page"
head -c 24 /dev/urandom | base64 > "$slot/demo/api-token"
setsid "$bin"/berth run --repo "file://$slot/git/app.git" --app demo \
  --checkout "$slot/demo/checkout" --known-hosts "$known_hosts" \
  --listen "$listen" --interval 10s --api-token-file "$slot/demo/api-token" \
  > "$slot/demo/berth.log" 2>&1 < /dev/null &
echo $! > "$slot/demo/berth.pid"
until_true 20 api /healthz
echo "status page: http://$listen/   (API token for its sync button: $slot/demo/api-token)"
until_true 120 in_sync
echo "deployed v1:"; show_served

step "a config PR bumps x-berth.version to v2 and is merged"
sed -i 's/^  version: v1$/  version: v2/' "$work/config/deploy.yml"
git_ commit -qam "deploy v2"
git_ push -q "file://$slot/git/app.git" main
# A webhook would do this; here the API's sync (the status page's button).
curl -fsS -X POST -H "Authorization: Bearer $(cat "$slot/demo/api-token")" \
  "http://$listen/api/v1/apps/demo/sync"
until_true 120 serves "demo v2"
echo "rolled to v2 (boot.limit hosts at a time), health-gated through kamal-proxy:"; show_served
grep -E "booting|is healthy|stopped" "$slot/demo/berth.log" | tail -6 | sed -E 's/^[^ ]+ +INFO [^ ]+ /  /' || true

step "drift by hand: docker stop demo-web-v2 on ${hosts[1]}"
running() { [ "$(docker -H "unix://$slot/hosts/h2/docker.sock" inspect -f '{{.State.Running}}' demo-web-v2)" = true ]; }
docker -H "unix://$slot/hosts/h2/docker.sock" stop demo-web-v2 >/dev/null
stopped_at=$(date +%s%N)
# A finer poll than until_true's, to tell the heal time to a tenth of a second.
end=$((SECONDS + 60))
until running 2>/dev/null; do
  ((SECONDS < end)) || { echo "timed out waiting for the heal" >&2; tail -20 "$slot/demo/berth.log" >&2; exit 1; }
  sleep 0.05
done
healed_ms=$(( ($(date +%s%N) - stopped_at) / 1000000 ))
until_true 30 in_sync
echo "healed in ${healed_ms} ms: demo-web-v2 runs again on ${hosts[1]} (seen through docker events; the poll interval is 10s)"
api /metrics | grep -E '^berth_(app_in_sync|reconcile_total)' | sed 's/^/  /'

step "real Kamal reads the fleet berth manages"
kamal=${BERTH_KAMAL:-/opt/kamal-venv/bin/kamal}
(cd "$work" && if ! HOME=$slot/client "$kamal" app version -q 2>/dev/null; then HOME=$slot/client "$kamal" app version; fi)

echo
echo "berth keeps running (pid $(cat "$slot/demo/berth.pid"), log $slot/demo/berth.log):"
echo "  status page  http://$listen/"
echo "  metrics      http://$listen/metrics"
echo "  try a drift  docker -H unix://$slot/hosts/h1/docker.sock stop demo-web-v2"
echo "  a host       ssh -i $slot/client/.ssh/id_ed25519 -o UserKnownHostsFile=$known_hosts root@${hosts[0]}"
echo "Stop berth and the fleet: $bin/berth-testbed down"
