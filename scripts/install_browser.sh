#!/usr/bin/env bash
# Install Debian's chromium and chromedriver for the browser test (tests/serve/test_browser.py).
# Does nothing if both are there; exits non-zero (and says why) if they cannot be installed.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: no apt-get here; install chromium and chromedriver yourself" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install_browser: not root and no password-less sudo; run: apt-get install chromium chromium-driver" >&2
    exit 1
  fi
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
command -v chromium >/dev/null && command -v chromedriver >/dev/null
