# shellcheck shell=sh
# Prepended to prep.sh, boot.sh and finish.sh: the Engine API over the
# host's unix socket with curl when both exist; callers fall back to the
# docker CLI when `api` fails.
sock=""
case "${DOCKER_HOST:-}" in unix://*) sock="${DOCKER_HOST#unix://}";; "") sock=/var/run/docker.sock;; esac
api() { [ -n "$sock" ] && [ -S "$sock" ] && command -v curl >/dev/null 2>&1 && curl -sf --unix-socket "$sock" "http://d$1"; }
apipost() { [ -n "$sock" ] && [ -S "$sock" ] && command -v curl >/dev/null 2>&1 && curl -sf -o /dev/null -X POST --unix-socket "$sock" "http://d$1"; }
