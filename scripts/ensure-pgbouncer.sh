#!/usr/bin/env bash
# `make bench` compares the Postgres proxy with pgbouncer, a plain C pooler, as the reference.
# As root on Debian/Ubuntu we install it (and fail if that does not work); anywhere else we say
# what to install and carry on: the bench then leaves the pgbouncer figures out.
set -euo pipefail
have_pgbouncer() { command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ]; }
if have_pgbouncer; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "pgbouncer not found: installing the pgbouncer package" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
  have_pgbouncer
  exit 0
fi
echo "make bench compares the Postgres proxy with pgbouncer: install your distribution's pgbouncer" >&2
echo "package (e.g. apt-get install -y pgbouncer); until then its figures are left out" >&2
exit 0
