# shellcheck shell=sh
# $1 line, $2 audit log.
mkdir -p .kamal && echo "$1" >> "$2"
