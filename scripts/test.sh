#!/usr/bin/env bash
# Install everything the tests need, run the static checks (ruff, mypy, import-linter), then the whole suite.
#   as root: Debian packages (qemu, tgt, PostgreSQL, ...) through apt, and a PostgreSQL cluster started
#   always:  a virtual environment in .venv with ggnet and its test dependencies
# Arguments are passed to one pytest run (e.g. scripts/test.sh -k machines); without, two run at once.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

APT_PACKAGES=(
  python3-venv python3-pip git
  postgresql
  qemu-utils qemu-system-x86 ipxe-qemu qemu-block-extra tgt libiscsi-bin
  busybox-static cpio kmod xfsprogs dnsmasq-base iputils-ping tmux
  libudev1  # loaded by rtslib-fb (through pyudev) for the LIO backend
  # the OS-phase test disk (tests/e2e/osphase): tools that build it, and UEFI firmware for the clients;
  # the guest's own packages (kernel, open-iscsi, signed shim and GRUB) are only downloaded and unpacked
  fdisk dosfstools mtools syslinux syslinux-common grub-common e2fsprogs ovmf
)

if [ "$(id -u)" = 0 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  python3 -m venv .venv
fi
echo "== pip install -e .[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"

# a PostgreSQL server for the database tests (Debian's cluster, started if needed)
if [ -z "${GGNET_TEST_PG_URL:-}" ] && command -v pg_lsclusters >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    read -r version cluster port _ < <(pg_lsclusters --no-header | head -1) || true
    if [ -n "${version:-}" ]; then
      pg_ctlcluster "$version" "$cluster" start 2>/dev/null || true
      for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p "$port" && break; sleep 0.2; done
      su postgres -c "psql -q -v ON_ERROR_STOP=1" <<'SQL' >/dev/null
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ggnet_test') THEN
    CREATE ROLE ggnet_test LOGIN CREATEDB PASSWORD 'ggnet_test';
  END IF;
END $$;
GRANT pg_signal_backend TO ggnet_test;
SQL
      export GGNET_TEST_PG_URL="postgresql+asyncpg://ggnet_test:ggnet_test@127.0.0.1:${port}/postgres"
    fi
  fi
fi

# static checks first: a lint slip, a type error or a forbidden import fails the run before any test
echo "== ruff format --check"
.venv/bin/ruff format --check .
echo "== ruff check"
.venv/bin/ruff check .
echo "== mypy (core)"
.venv/bin/mypy
echo "== lint-imports"
.venv/bin/lint-imports

if [ $# -gt 0 ]; then
  echo "== pytest $*"
  exec .venv/bin/python -m pytest "$@"
fi

# The whole suite as two pytest runs at once, one per core: the end-to-end tests (mostly QEMU clients
# under TCG and the LIO VM) and the rest (mostly Python). Each has its own temporary directory and
# databases; the end-to-end run's output follows the other's. One after the other they took 22 min.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== pytest tests/e2e (in the background) and the rest of tests/"
.venv/bin/python -m pytest tests/e2e --basetemp="$work/e2e" >"$work/e2e.log" 2>&1 &
e2e=$!
set +e
.venv/bin/python -m pytest tests --ignore=tests/e2e --basetemp="$work/rest"
rest_status=$?
wait "$e2e"
e2e_status=$?
set -e
echo "== pytest tests/e2e (ran at the same time)"
cat "$work/e2e.log"
if [ "$rest_status" -ne 0 ] || [ "$e2e_status" -ne 0 ]; then
  echo "pytest failed: tests/e2e exit $e2e_status, the rest exit $rest_status"
  exit 1
fi
