#!/usr/bin/env bash
# Install ggnet into .venv (system packages through apt when run as root) and start the console.
# Arguments are passed to `ggnet` (e.g. scripts/run.sh machine list).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME_PACKAGES=(python3-venv python3-pip qemu-utils tgt dnsmasq-base xfsprogs iputils-ping)

if [ "$(id -u)" = 0 ]; then
  missing=()
  for p in "${RUNTIME_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
exec .venv/bin/ggnet "$@"
