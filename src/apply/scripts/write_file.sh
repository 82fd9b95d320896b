# shellcheck shell=sh
# $1 path, $2 mode; stdin: the contents (written aside, then renamed).
umask 077 && mkdir -p "$(dirname "$1")" && cat > "$1.berth-tmp" && chmod "$2" "$1.berth-tmp" && mv "$1.berth-tmp" "$1"
