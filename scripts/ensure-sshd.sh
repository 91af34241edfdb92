#!/usr/bin/env bash
# The SSH target's tests and the demo start a real OpenSSH server (sshd) of their own on loopback.
# As root on Debian/Ubuntu we install the openssh-server package (the package's own service is not
# started: the tests run their own sshd with their own config); anywhere else we say what to install.
set -euo pipefail
have_sshd() { command -v sshd >/dev/null || [ -x /usr/sbin/sshd ]; }
if have_sshd; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "sshd not found: installing the openssh-server package" >&2
  # policy-rc.d exit 101 keeps the package from starting its own sshd on port 22 (we never want that).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
  have_sshd
  exit 0
fi
echo "The SSH target's tests need OpenSSH's server: install your distribution's openssh-server package" >&2
echo "(e.g. apt-get install -y openssh-server); its own service need not run" >&2
exit 1
