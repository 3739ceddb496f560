#!/usr/bin/env bash
# Installs Debian's chromium for the headless-browser tests (UI pages and the run report,
# driven by Playwright with executable_path=/usr/bin/chromium; no browser download).
# Idempotent: does nothing when `chromium` is already on PATH. Run once, serially (not from
# parallel test workers): apt holds a lock. Without root (and no password-less sudo) it says
# what to run and leaves the rest of the setup alone; the browser tests then fail naming this script.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: warning: chromium is not installed and this is not a Debian/Ubuntu system (no apt-get); install chromium by hand for the browser tests." >&2
  exit 0
fi

SUDO=""
if [[ "$(id -u)" != "0" ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "setup: warning: chromium is not installed and installing it needs root: run 'sudo bash scripts/setup_browser.sh' (the browser tests need it)." >&2
    exit 0
  fi
fi

echo "setup: installing Debian's chromium (apt-get) for the browser tests"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "setup: $(chromium --version)"
