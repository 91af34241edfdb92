#!/usr/bin/env bash
# The approvals console test drives the system Chromium through Playwright (pip `playwright`).
# `playwright install` downloads a browser build of its own, which cannot be fetched here: the
# browser comes from Debian's `chromium` package instead. As root on Debian/Ubuntu we install
# it; anywhere else we say what to install.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Chromium not found: installing the chromium package" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  exit 0
fi
echo "the console test needs Chromium at /usr/bin/chromium: install your distribution's chromium package" >&2
exit 1
