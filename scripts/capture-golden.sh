#!/usr/bin/env bash
# Regenerates tests/golden/*/kamal.json from REAL Kamal 2.11 runs: for each
# scenario, a fresh 3-host testbed (slot 0: hosts 10.210.0.11-13, as the
# scenario configs name them), `kamal deploy` (and `kamal accessory boot all`
# where the scenario says so), then the `docker run` and `kamal-proxy deploy`
# commands from Kamal's own log, as argv, and the env files Kamal wrote on the
# hosts. tests/golden.rs compares berth's rendering against these files.
# Usage: scripts/capture-golden.sh [scenario...]   (root; runs install-deps)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scripts/install-deps.sh
kamal="${BERTH_KAMAL:-${BERTH_KAMAL_VENV:-/opt/kamal-venv}/bin/kamal}"
cargo build -q -p berth-testbed --bin berth-testbed
proxy_bin=$(scripts/build-standin.sh)
tb=$root/target/debug/berth-testbed
trap '$tb down --slot 0 >/dev/null' EXIT

scenarios=("$@")
if ((${#scenarios[@]} == 0)); then
  for d in tests/golden/*/; do scenarios+=("$(basename "$d")"); done
fi

for s in "${scenarios[@]}"; do
  src=$root/tests/golden/$s
  echo "== $s"
  $tb up 3 --slot 0 >/dev/null
  $tb images --slot 0 --proxy-binary "$proxy_bin" >/dev/null
  work=$(mktemp -d)
  cp -r "$src/config" "$src/.kamal" "$work/"
  version=$(sed -n 's/^version=//p' "$src/scenario")
  dest=$(sed -n 's/^destination=//p' "$src/scenario")
  dflag=(); [[ -n $dest ]] && dflag=(-d "$dest")
  log=$work/kamal.log
  k() { (cd "$work" && HOME=/var/tmp/berth-testbed/0/client VERSION="$version" "$kamal" "$@" >>"$log" 2>&1) || {
    cat "$log"; echo "kamal $* failed" >&2; exit 1; }; }
  if grep -q '^proxy=yes' "$src/scenario"; then
    k proxy boot_config set "${dflag[@]}" --registry 10.210.0.1:5000 \
      --repository basecamp --image-version v0.9.2
  fi
  k deploy --skip-push --version "$version" "${dflag[@]}"
  if grep -q '^accessories=all' "$src/scenario"; then
    k accessory boot all "${dflag[@]}"
  fi
  python3 - "$log" /var/tmp/berth-testbed/0/hosts "$src/kamal.json" <<'PY'
import json, os, re, shlex, sys
log, hosts_dir, out = sys.argv[1:]
commands = []
for line in open(log):
    m = re.search(r"Running (.*) on (\S+)$", line.rstrip())
    if not m:
        continue
    cmd, host = m.groups()
    # proxy.run boots as `docker container start kamal-proxy || docker run ...`.
    cmd = re.sub(r"^docker container start kamal-proxy \|\| (docker run )", r"\1", cmd)
    if not (cmd.startswith("docker run ") or cmd.startswith("docker exec kamal-proxy kamal-proxy deploy ")):
        continue
    argv = shlex.split(cmd)
    # Per-run randomness: the hostname suffix and the target container id.
    argv = [re.sub(r"^(10\.210\.0\.\d+)-[0-9a-f]{12}$", r"\1-HOSTNAME", a) for a in argv]
    argv = [re.sub(r"^--target=[0-9a-f]{12}:", "--target=CONTAINER_ID:", a) for a in argv]
    commands.append({"host": host, "argv": argv})
commands.sort(key=lambda c: (c["host"], c["argv"]))
env_files = {}
for h in sorted(os.listdir(hosts_dir)):
    home = os.path.join(hosts_dir, h, "home")
    addr = "10.210.0.%d" % (10 + int(h[1:]))
    for dirpath, _, files in os.walk(os.path.join(home, ".kamal")):
        for f in files:
            if f.endswith(".env"):
                p = os.path.join(dirpath, f)
                env_files.setdefault(addr, {})[os.path.relpath(p, home)] = open(p).read()
json.dump({"kamal": "2.11.0", "commands": commands, "env_files": env_files}, open(out, "w"), indent=1, sort_keys=True)
print("  %d commands, %d env files" % (len(commands), sum(len(v) for v in env_files.values())))
PY
  rm -rf "$work"
  $tb down --slot 0 >/dev/null
done
