#!/usr/bin/env bash
# The tests and the demo start a throwaway PostgreSQL server: the server binaries must be here.
# As root on Debian/Ubuntu we install them; anywhere else we say exactly what to install.
set -euo pipefail
if .venv/bin/python -c 'from gatehouse.local.postgres import find_bindir; find_bindir()' 2>/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "PostgreSQL server binaries not found: installing the postgresql package" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  exit 0
fi
.venv/bin/python -c 'from gatehouse.local.postgres import INSTALL_HINT; print(INSTALL_HINT)' >&2
exit 1
