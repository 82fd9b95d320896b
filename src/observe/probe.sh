# shellcheck shell=sh
# observe::probe::SCRIPT: the arguments and sections are documented there.
want=" "; proxy_wanted=""; urls=""; force_cli=""; engine=""; proxy_state=""; proxy_quiet=""
for a in "$@"; do case "$a" in
  L:*) want="$want${a#L:} "; urls="$urls http://d/containers/json?all=1&filters=%7B%22label%22%3A%5B%22service%3D${a#L:}%22%5D%7D";;
  P) proxy_wanted=1;;
  S:*) proxy_state="${a#S:}";;
  C) force_cli=1;;
  E) engine=1;;
  Q) proxy_quiet=1;;
esac; done
sock=""
case "${DOCKER_HOST:-}" in unix://*) sock="${DOCKER_HOST#unix://}";; "") sock=/var/run/docker.sock;; esac
# First, so that berth can reach the Engine API while the rest runs.
if [ -n "$sock" ] && [ -S "$sock" ]; then echo "@@socket $sock"; fi
proxy_running=""
if [ -n "$engine" ]; then proxy_running=1; fi
echo "@@inspect"
if [ -n "$engine" ]; then :
elif [ -z "$force_cli" ] && [ -n "$sock" ] && [ -S "$sock" ] && command -v curl >/dev/null 2>&1; then
  urls="$urls http://d/containers/json?all=1&filters=%7B%22name%22%3A%5B%22%5Ekamal-proxy%24%22%5D%7D"
  # shellcheck disable=SC2086 # one URL per word
  list=$(curl -sSf --unix-socket "$sock" $urls) || exit 3
  case "$list" in *'"Names":["/kamal-proxy"]'*'"State":"running"'*) proxy_running=1;; esac
  # Container and image ids, with shell builtins only (no process per step).
  inspect=""; imgs=" "; rest=$list
  while :; do case "$rest" in *'"Id":"'*) rest=${rest#*'"Id":"'}; inspect="$inspect http://d/containers/${rest%%'"'*}/json";; *) break;; esac; done
  rest=$list
  while :; do case "$rest" in *'"ImageID":"'*) rest=${rest#*'"ImageID":"'}; im=${rest%%'"'*}
    case "$imgs" in *" $im "*) ;; *) imgs="$imgs$im "; inspect="$inspect http://d/images/$im/json";; esac;; *) break;; esac; done
  # shellcheck disable=SC2086 # one URL per word
  if [ -n "$inspect" ]; then curl -sS --unix-socket "$sock" -w '\n' $inspect || exit 3; fi
else
  ps_out=$(docker ps -a --no-trunc --format '{{.ID}}|{{.Image}}|{{.Names}}|{{.Label "service"}}|{{.State}}') || { echo "docker ps failed" >&2; exit 3; }
  sel=""; refs=""
  while IFS='|' read -r id image name svc state; do
    [ -n "$id" ] || continue
    keep=""
    if [ -n "$svc" ]; then case "$want" in *" $svc "*) keep=1;; esac; fi
    if [ "$name" = kamal-proxy ]; then keep=1; [ "$state" = running ] && proxy_running=1; fi
    if [ -n "$keep" ]; then
      sel="$sel $id"
      case " $refs " in *" $image "*) ;; *) refs="$refs $image";; esac
    fi
  done <<PS
$ps_out
PS
  # shellcheck disable=SC2086 # one id or image per word
  if [ -n "$sel" ]; then docker inspect $sel $refs 2>/dev/null || docker inspect $sel || exit 3; else echo '[]'; fi
fi
echo "@@proxy"
if [ -n "$proxy_running" ] && [ -n "$proxy_wanted" ] && [ -z "$proxy_quiet" ]; then
  docker exec kamal-proxy kamal-proxy list 2>&1 || echo "@@proxy-error"
  echo "@@proxy-state"
  # docker cp, not exec: the proxy's image need not have a cat.
  docker cp "kamal-proxy:$proxy_state" - 2>/dev/null | tar -xOf - 2>/dev/null || :
elif [ -n "$proxy_running" ]; then echo "@@proxy-unasked"
else echo "@@proxy-absent"; fi
echo "@@lock"
acc_dir=""; acc_service=""; known=" "
for a in "$@"; do case "$a" in
  K:*) d="${a#K:}"
    if [ -d "$d" ]; then printf 'held %s\n' "$(base64 -w0 "$d/details" 2>/dev/null)"; fi;;
  A:*) acc_dir="${a#A:}";;
  V:*) acc_service="${a#V:}";;
  N:*) known="$known${a#N:} ";;
esac; done
# Accessories Kamal booted here (their env files) that the config no longer
# names: `stray <name> <container status|missing>`.
if [ -n "$acc_dir" ] && [ -d "$acc_dir" ]; then
  for f in "$acc_dir"/*.env; do
    [ -f "$f" ] || continue
    n=${f##*/}; n=${n%.env}
    case "$known" in *" $n "*) continue;; esac
    st=$(docker inspect -f '{{.State.Status}}' "$acc_service-$n" 2>/dev/null) || st=missing
    printf 'stray %s %s\n' "$n" "$st"
  done
fi
echo "@@files"
n=$#
for a in "$@"; do case "$a" in F:*) f="${a#F:}"; [ -f "$f" ] && set -- "$@" "$f";; esac; done
shift $n
if [ $# -gt 0 ]; then sha256sum -- "$@"; fi
echo "@@end"
