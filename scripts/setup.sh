#!/bin/bash
# Everything astrostack needs on a fresh Debian 12 machine (as root), once:
# Debian packages, the project's venv (.venv) with astrostack installed.
# Idempotent: a second run only checks. The local cloud (a real OpenStack,
# its Debian packages, its VM image) is prepared by `astrostack local start`.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker.io cloud-init shellcheck debootstrap python3-venv python3-pip openssh-client curl ca-certificates iproute2 procps)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# cloud-init must not run on this machine itself: it is only used for its schema check.
touch /etc/cloud/cloud-init.disabled 2>/dev/null || true

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c 'import astrostack, tox, tox_uv' >/dev/null 2>&1 || [ setup.cfg -nt .venv/.installed ]; then
  echo "setup: installing astrostack into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]' tox tox-uv >/dev/null
  touch .venv/.installed
fi
echo "setup: done ($(.venv/bin/astrostack --version))"
