# shellcheck shell=sh
# Arguments: apply::scripts::FinishArgs. Exit codes: apply::scripts::FinishExit.
log=$1; line=$2; image=$3; latest=$4; retain=$5; service=$6; pruned=$7
mkdir -p .kamal && echo "$line" >> "$log"
apipost "/images/$image/tag?repo=${latest%:*}&tag=${latest##*:}" || docker tag "$image" "$latest" || exit 30
# Stopped containers of the service, newest first (as `docker ps`), through
# the Engine API when it answers.
if list=$(api "/containers/json?all=1&filters=%7B%22label%22%3A%5B%22service%3D$service%22%5D%2C%22status%22%3A%5B%22created%22%2C%22exited%22%2C%22dead%22%5D%7D"); then
  stopped=""; rest=$list
  while :; do case "$rest" in *'"Id":"'*) rest=${rest#*'"Id":"'}; stopped="$stopped${rest%%'"'*}
";; *) break;; esac; done
else
  stopped=$(docker ps -q -a --filter "label=service=$service" --filter status=created --filter status=exited --filter status=dead)
fi
old=$(printf '%s' "$stopped" | tail -n +$((retain + 1)))
if [ -n "$old" ]; then
  # shellcheck disable=SC2086 # one container id per word
  docker rm $old >/dev/null && echo "$pruned" >> "$log"
  # Images no container of the service uses any more (but `latest`), as
  # Kamal's `prune images`: old versions do not fill the disk.
  used=" $(docker ps -a --filter "label=service=$service" --format '{{.Image}}' | tr '\n' ' ') $latest "
  docker image ls --filter "label=service=$service" --format '{{.Repository}}:{{.Tag}}' | while read -r ref; do
    case "$ref" in *:"<none>") continue;; esac
    case "$used" in *" $ref "*) ;; *) docker rmi "$ref" >/dev/null 2>&1 || true;; esac
  done
  docker image prune --force --filter "label=service=$service" >/dev/null 2>&1 || true
fi
exit 0
