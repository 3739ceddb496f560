#!/usr/bin/env bash
# Installs Debian's mariadb-server for the ML-Metadata-on-MySQL tests (tests/support/mariadb.py
# starts a throwaway server per test module from these binaries; production points `metadata:`
# at its own MySQL/MariaDB/Cloud SQL). Idempotent: does nothing when mariadbd is installed.
# Run once, serially (not from parallel test workers): apt holds a lock. The package's own
# service is not started (the tests start their own servers). Without root (and no
# password-less sudo) it says what to run and leaves the rest of the setup alone; the MySQL
# tests then fail naming this script.
set -euo pipefail

if command -v mariadbd >/dev/null 2>&1 || [[ -x /usr/sbin/mariadbd ]]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: warning: mariadb-server is not installed and this is not a Debian/Ubuntu system (no apt-get); install MariaDB (mariadbd, mariadb-install-db, mariadb client) for the ML Metadata on MySQL tests." >&2
  exit 0
fi

SUDO=""
if [[ "$(id -u)" != "0" ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "setup: warning: mariadb-server is not installed and installing it needs root: run 'sudo bash scripts/setup_mariadb.sh' (the ML Metadata on MySQL tests need it)." >&2
    exit 0
  fi
fi

# Keep the package's post-install from starting a system-wide server (policy-rc.d 101 =
# "action forbidden", Debian's invoke-rc.d policy interface), unless a policy exists already.
POLICY=/usr/sbin/policy-rc.d
if [[ ! -e "$POLICY" ]]; then
  $SUDO sh -c "printf '#!/bin/sh\nexit 101\n' > $POLICY && chmod 755 $POLICY"
  trap '$SUDO rm -f "$POLICY"' EXIT
fi

echo "setup: installing Debian's mariadb-server (apt-get) for the ML Metadata on MySQL tests"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mariadb-server mariadb-client >/dev/null
echo "setup: $(/usr/sbin/mariadbd --version)"
