#!/usr/bin/env bash
# Builds berth's container image (see Dockerfile for the image's contract).
#
# The berth binary is built outside the image, on this machine, and copied in:
# no Rust toolchain image can be pulled here, so the Dockerfile has no builder
# stage. The default is therefore exactly
#
#   cargo build --release --locked && docker build -t berth:<version> .
#
# Build on Debian bookworm (or with glibc <= 2.36): the binary links glibc,
# libssl3 and zlib dynamically, which the bookworm-slim base provides.
#
# Usage: scripts/build-image.sh [options]
#   --tag TAG        image name (default berth:<Cargo.toml version>)
#   --binary PATH    use this prebuilt berth binary (no cargo build); it is
#                    staged with the Dockerfile in a temporary build context
#   --network MODE   passed to `docker build --network` (e.g. host, when the
#                    daemon has no bridge network but apt-get must reach
#                    deb.debian.org)
#   --local-base     make debian:bookworm-slim in the daemon when it has none,
#                    since none can be pulled here: debootstrap --variant=minbase
#                    bookworm from $DEBIAN_MIRROR (default
#                    http://deb.debian.org/debian), then `docker import`. Needs
#                    root and debootstrap; skipped when the image exists.
#   --base-only      stop after --local-base (build nothing)
#
# The docker CLI talks to whatever daemon DOCKER_HOST names (the test
# tests/container_image.rs uses a private dockerd and this script).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n1)"
tag="berth:${version:-dev}"
binary=""
network=""
local_base=false
base_only=false
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
base_image="debian:bookworm-slim"

die() {
  echo "build-image.sh: $*" >&2
  exit 1
}

while (($#)); do
  case "$1" in
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    --network) network="${2:?--network needs a value}"; shift 2 ;;
    --local-base) local_base=true; shift ;;
    --base-only) local_base=true; base_only=true; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

tmp_dirs=()
cleanup() {
  local d
  for d in "${tmp_dirs[@]}"; do
    rm -rf --one-file-system "$d"
  done
}
trap cleanup EXIT

# debian:bookworm-slim as debootstrap makes it: a minbase bookworm with the
# official image's apt sources (bookworm, -updates, -security), no apt lists.
make_local_base() {
  if docker image inspect "$base_image" >/dev/null 2>&1; then
    echo "$base_image: present in the daemon, not rebuilt"
    return
  fi
  [[ $(id -u) == 0 ]] || die "--local-base needs root (debootstrap)"
  command -v debootstrap >/dev/null || die "--local-base needs debootstrap (apt-get install debootstrap)"
  local root
  root="$(mktemp -d /var/tmp/berth-base.XXXXXX)"
  tmp_dirs+=("$root")
  echo "$base_image: debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 ||
    { cat "$root.log" >&2; rm -f "$root.log"; die "debootstrap failed"; }
  rm -f "$root.log"
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # Like the official -slim variant: no docs, man pages or translations
  # (dpkg skips them from now on too, in images built on this base).
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "${root:?}"/usr/share/{man,groff,info,lintian,linda}/*
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  # What docker provides at run time, and what this machine left behind.
  : >"$root/etc/resolv.conf"
  : >"$root/etc/hostname"
  rm -rf "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/cache/apt/*.bin \
    "${root:?}"/var/cache/apt/archives/*.deb "${root:?}"/var/log/* "${root:?}"/dev/*
  tar --numeric-owner -C "$root" -c . |
    docker import --change 'CMD ["bash"]' \
      --message "debootstrap --variant=minbase bookworm (scripts/build-image.sh)" - "$base_image" >/dev/null
  echo "$base_image: imported"
}

if $local_base; then
  make_local_base
fi
$base_only && exit 0

if [[ -n $binary ]]; then
  [[ -x $binary ]] || die "$binary is not an executable file"
  context="$(mktemp -d /var/tmp/berth-image-context.XXXXXX)"
  tmp_dirs+=("$context")
  cp "$repo/Dockerfile" "$context/Dockerfile"
  cp "$binary" "$context/berth"
  binary_arg="berth"
else
  (cd "$repo" && cargo build --release --locked)
  context="$repo"
  binary_arg="target/release/berth"
fi

revision="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
build=(docker build --tag "$tag" --file "$context/Dockerfile"
  --build-arg "BERTH_BINARY=$binary_arg"
  --build-arg "VERSION=${version:-dev}"
  --build-arg "REVISION=$revision")
[[ -n $network ]] && build+=(--network "$network")
"${build[@]}" "$context"
echo "built $tag"
