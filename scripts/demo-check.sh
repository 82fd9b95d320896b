#!/usr/bin/env bash
# The README's first command under test (CI runs this): scripts/demo.sh to
# its end, non-interactively, then each of its promises checked against the
# fleet itself rather than against what the demo printed — deployed, rolled
# to v2, hand-made drift healed by a cycle that docker events started, real
# Kamal reading the fleet — then berth stopped (SIGTERM), the testbed torn
# down, and nothing left behind.
#
# The demo owns testbed slot 0; tests take slots from 1 up, so this can run
# beside the test suite. BERTH_DEMO_PROFILE (default dev here: the test
# build's artifacts) picks the cargo profile the demo builds.
set -euo pipefail
cd "$(dirname "$0")/.."
export BERTH_DEMO_PROFILE="${BERTH_DEMO_PROFILE:-dev}"
fail() { echo "demo-check: FAIL: $*" >&2; exit 1; }
ok() { echo "demo-check: ok: $*"; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
listen=127.0.0.1:$port
out=$(mktemp)
trap 'rm -f "$out"' EXIT
BERTH_DEMO_LISTEN=$listen scripts/demo.sh 2>&1 | tee "$out" \
  || fail "scripts/demo.sh exited ${PIPESTATUS[0]}"

slot=/var/tmp/berth-testbed/0
root=$PWD
bin=${CARGO_TARGET_DIR:-$root/target}/$([ "$BERTH_DEMO_PROFILE" = dev ] && echo debug || echo "$BERTH_DEMO_PROFILE")
hosts=(10.210.0.11 10.210.0.12)
pid=$(cat "$slot/demo/berth.pid")
log=$slot/demo/berth.log
docker_on() { local h=$1; shift; docker -H "unix://$slot/hosts/$h/docker.sock" "$@"; }

# Deployed and rolled to v2: the API's view, at the pushed commit.
head=$(git -C "$slot/demo/work" rev-parse HEAD)
curl -fsS "http://$listen/api/v1/apps" | python3 -c '
import json, sys
head = sys.argv[1]
apps = json.load(sys.stdin)["apps"]
assert len(apps) == 1, apps
a = apps[0]
assert a["app"] == "demo", a["app"]
assert a["in_sync"] and a["observed"], a["last_plan"]
assert a["version"] == "v2", a["version"]
assert a["revision"] == head, (a["revision"], head)
assert all(a["hosts"].values()) and len(a["hosts"]) == 3, a["hosts"]
' "$head" || fail "the API does not show demo in sync at v2 on $head"
ok "the API shows demo in sync at v2, revision $head, 3 hosts up"

# What the hosts serve, through kamal-proxy, and what runs there.
for i in 0 1; do
  h=${hosts[$i]}
  body=$(curl -fsS -H 'Host: demo.test' "http://$h/") || fail "$h does not answer"
  [ "$body" = "demo v2" ] || fail "$h serves '$body', not 'demo v2'"
  names=$(docker_on "h$((i + 1))" ps --format '{{.Names}}')
  grep -qx demo-web-v2 <<<"$names" || fail "demo-web-v2 does not run on $h: $names"
  if grep -qx demo-web-v1 <<<"$names"; then fail "demo-web-v1 still runs on $h"; fi
done
ok "both web hosts serve 'demo v2' from demo-web-v2; v1 is stopped"

# The heal: a cycle started by docker events applied it (the poll interval
# is 10 s, so a heal by polling would show trigger="interval"). The time is
# reported, not asserted: speed targets live in benchmarks.
healed=$(grep -o 'healed in [0-9]* ms' "$out") || fail "the demo did not report the heal"
grep -Eq 'reconciled .*trigger="event" result=applied' "$log" \
  || fail "no cycle triggered by docker events applied anything: $(grep reconciled "$log" | tail -5)"
ok "drift $healed, by a cycle docker events started"

# Real Kamal read the running version off the fleet: `kamal app version -q`
# prints one line per host of the app (two web hosts, one worker host).
kamal_out=$(sed -n '/real Kamal reads the fleet/,/^berth keeps running/p' "$out")
versions=$(grep -Ec '^v[0-9]+$' <<<"$kamal_out" || true)
if [ "$versions" != 3 ] || [ "$(grep -c '^v2$' <<<"$kamal_out")" != 3 ]; then
  fail "kamal app version did not read v2 on the 3 hosts: $kamal_out"
fi
ok "kamal app version reads v2 on all 3 hosts"

# Tear down: berth stops cleanly on SIGTERM, then the testbed; nothing left.
kill -TERM "$pid"
for _ in $(seq 1 600); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then fail "berth (pid $pid) did not stop within 60 s of SIGTERM"; fi
[ ! -e "/tmp/berth-ssh-$pid" ] || fail "berth left its SSH control directory /tmp/berth-ssh-$pid"
"$bin/berth-testbed" down || fail "the testbed left something behind"
if curl -fsS -o /dev/null "http://$listen/healthz" 2>/dev/null; then fail "something still answers on $listen"; fi
left=$(ip netns list | grep -c '^bt0h' || true)
[ "$left" = 0 ] || fail "$left network namespaces of slot 0 left"
[ ! -e "$slot" ] || fail "$slot left"
ok "berth stopped on SIGTERM, the testbed is down, nothing is left"
