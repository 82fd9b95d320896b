# shellcheck shell=sh
# Arguments: apply::scripts::BootArgs; stdin: the env file.
# Exit codes: apply::scripts::BootExit.
f=$1; name=$2; renamed=$3; log=$4; booted=$5; renamedline=$6; timeout=$7; delay=$8; run=$9; shift 9
old=$1; stop_t=$2; shift 2
umask 077
{ mkdir -p "$(dirname "$f")" && cat > "$f.berth-tmp" && chmod 600 "$f.berth-tmp" && mv "$f.berth-tmp" "$f"; } || { echo "cannot write $f" >&2; exit 20; }
umask 022
mkdir -p .kamal
if [ -n "$renamed" ]; then echo "$renamedline" >> "$log"; docker rename "$name" "$renamed" || exit 21; fi
echo "$booted" >> "$log"
if [ -n "$run" ]; then
  id=$(eval "$run") || exit 22
else
  docker start "$name" >/dev/null || exit 22
  id=$(docker inspect -f '{{.Id}}' "$name") || exit 22
fi
id=$(printf '%.12s' "$id")
echo "@@id $id"
if [ $# -gt 0 ]; then
  svc=$1; port=$2; shift 2
  docker exec kamal-proxy kamal-proxy deploy "$svc" "--target=$id:$port" "$@" || exit 23
else
  status_of() {
    if j=$(api "/containers/$name/json"); then
      case "$j" in
        *'"Health":{"Status":"'*) j=${j#*'"Health":{"Status":"'};;
        *) j=${j#*'"State":{"Status":"'};;
      esac
      echo "${j%%'"'*}"
    else
      docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$name"
    fi
  }
  end=$(( $(date +%s) + timeout )); status=""
  while :; do
    status=$(status_of)
    if [ "$status" = running ] && [ "$delay" -gt 0 ]; then
      sleep "$delay"
      status=$(status_of)
    fi
    case "$status" in running|healthy) break;; esac
    [ "$(date +%s)" -lt "$end" ] || { echo "container not ready after $timeout seconds ($status)" >&2; exit 24; }
    sleep 0.25
  done
fi
if [ -n "$old" ]; then
  # The Engine API when it answers (a docker CLI start-up less per host).
  if [ -n "$stop_t" ]; then
    apipost "/containers/$old/stop?t=$stop_t" || docker stop -t "$stop_t" "$old" >/dev/null
  else
    apipost "/containers/$old/stop" || docker stop "$old" >/dev/null
  fi
fi
exit 0
