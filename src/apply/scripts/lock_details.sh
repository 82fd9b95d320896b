# shellcheck shell=sh
# $1 lock directory: prints the holder's details.
base64 -d < "$1/details"
