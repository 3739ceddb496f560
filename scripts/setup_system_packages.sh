#!/usr/bin/env bash
# Installs the Debian packages that tests drive for real, in one apt-get call:
#   chromium                      headless-browser tests: UI pages and the run report
#                                 (tests/support/browser.py, Playwright with executable_path)
#   mariadb-server mariadb-client ML Metadata on MySQL (tests/support/mariadb.py)
#   postgresql                    Airflow's metadata DB under a real scheduler (tests/support/postgres.py)
# Idempotent: installs only what is missing, and nothing when all is there. Run once,
# serially (never from parallel test workers: apt holds a lock). The packages' own services
# are not started (the tests start throwaway servers; production points Conveyor at its own).
# Without root (and no password-less sudo), or without apt-get, it says what to install and
# leaves the rest of the setup alone; the tests that need a missing package then fail naming it.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ! command -v mariadbd >/dev/null 2>&1 && [[ ! -x /usr/sbin/mariadbd ]]; then
  missing+=(mariadb-server mariadb-client)
fi
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || command -v postgres >/dev/null 2>&1 || missing+=(postgresql)
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: warning: ${missing[*]} not installed and this is not a Debian/Ubuntu system (no apt-get); install them by hand (browser, MySQL and Airflow-on-PostgreSQL tests)." >&2
  exit 0
fi

SUDO=""
if [[ "$(id -u)" != "0" ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "setup: warning: installing ${missing[*]} needs root: run 'sudo bash scripts/setup_system_packages.sh' (the browser, MySQL and Airflow-on-PostgreSQL tests need them)." >&2
    exit 0
  fi
fi

# Keep the packages' post-install scripts from starting system-wide servers (policy-rc.d
# exit 101 = "action forbidden", Debian's invoke-rc.d policy interface), unless a policy exists.
POLICY=/usr/sbin/policy-rc.d
if [[ ! -e "$POLICY" ]]; then
  $SUDO sh -c "printf '#!/bin/sh\nexit 101\n' > $POLICY && chmod 755 $POLICY"
  trap '$SUDO rm -f "$POLICY"' EXIT
fi

echo "setup: installing Debian packages for the tests (apt-get): ${missing[*]}"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: installed ${missing[*]}"
