# shellcheck shell=sh
# $1 lock directory; stdin: the details. `mkdir` is the atomic
# test-and-set Kamal uses.
mkdir -p "$(dirname "$1")" && mkdir "$1" && base64 > "$1/details"
