# shellcheck shell=sh
# Arguments: apply::scripts::PrepArgs; stdin: the registry password.
# Exit codes: apply::scripts::PrepExit.
server=$1; user=$2; image=$3; service=$4; log=$5; line=$6; pinned=$7
api /networks/kamal >/dev/null || docker network inspect kamal >/dev/null 2>&1 || docker network create kamal >/dev/null || exit 10
login() { [ -z "$server" ] || docker login "$server" -u "$user" --password-stdin >/dev/null || exit 11; }
if [ -n "$image" ]; then
  # A host keeps its registry login (~/.docker/config.json): pull first and
  # log in only when the registry asks, saving a round of docker CLI work.
  # Pinned (x-berth.image_digest): pull the digest, tag it as the version,
  # and refuse unless the version's tag is that digest.
  ref=${pinned:-$image}
  if ! docker pull --quiet "$ref" >/dev/null 2>&1; then
    login
    docker pull --quiet "$ref" >/dev/null || exit 12
  fi
  if [ -n "$pinned" ]; then
    docker tag "$pinned" "$image" || exit 12
    case " $(docker image inspect -f '{{range .RepoDigests}}{{.}} {{end}}' "$image") " in
      *" $pinned "*) ;;
      *) echo "$image is not the pinned $pinned" >&2; exit 14;;
    esac
  fi
  case "$(api "/images/$image/json")" in
    *'"service":"'"$service"'"'*) label=$service;;
    *) label=$(docker inspect -f '{{ .Config.Labels.service }}' "$image") || exit 12;;
  esac
  [ "$label" = "$service" ] || { echo "the image's service label is \"$label\", not \"$service\" (Kamal refuses such images too)" >&2; exit 13; }
  mkdir -p .kamal && echo "$line" >> "$log"
else
  login
fi
