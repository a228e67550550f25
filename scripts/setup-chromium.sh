#!/usr/bin/env bash
# Installs Debian's chromium (for the headless-browser UI test, tests/ui) when /usr/bin/chromium is missing.
# Idempotent: does nothing when chromium is already there. `apt-get update` is run only if the first
# install attempt fails (e.g. a stale or empty package list), then the install is retried once.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  echo "setup-chromium: $CHROMIUM present ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "setup-chromium: must run as root to install chromium" >&2; exit 1; }

install() { DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

echo "setup-chromium: installing chromium"
if ! install; then
  echo "setup-chromium: install failed; running apt-get update and retrying"
  apt-get update -qq
  install
fi
[ -x "$CHROMIUM" ] || { echo "setup-chromium: $CHROMIUM still missing after install" >&2; exit 1; }
echo "setup-chromium: $CHROMIUM ready ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
