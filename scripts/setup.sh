#!/usr/bin/env bash
# Creates .venv with Python 3.10 and installs the locked stack with uv.
# `--lock` recompiles requirements.lock from requirements.in instead.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python310() {
  local c
  for c in "$(command -v python3.10 2>/dev/null || true)" \
           "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10; do
    if [[ -n "$c" && -x "$c" ]] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  if command -v uv >/dev/null 2>&1; then uv python find 3.10 2>/dev/null && return 0; fi
  return 1
}

# uv is not a prerequisite: bootstrap it into .tools with whatever python3 exists.
UV=$(command -v uv 2>/dev/null || true)
if [[ -z "$UV" ]]; then
  if [[ ! -x .tools/bin/uv ]]; then
    echo "setup: installing uv into .tools/"
    python3 -m venv .tools
    .tools/bin/pip install --quiet --disable-pip-version-check 'uv==0.13.9'
  fi
  UV=.tools/bin/uv
fi

PY310=$(find_python310) || {
  echo "setup: Conveyor needs Python 3.10 (TFX 1.16 supports 3.9-3.10); install it with 'uv python install 3.10' or 'pyenv install 3.10', then rerun make." >&2
  exit 1
}

if [[ "${1:-}" == "--lock" ]]; then
  "$UV" pip compile requirements.in --python "$PY310" --python-platform x86_64-manylinux_2_36 -o requirements.lock
  exit 0
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $PY310"
  "$UV" venv --quiet --python "$PY310" .venv
fi
echo "setup: installing the locked stack (requirements.lock)"
"$UV" pip install --quiet --python .venv/bin/python -r requirements.lock
"$UV" pip install --quiet --python .venv/bin/python --no-deps -e .
bash scripts/setup_edge.sh "$UV" "$PY310"
bash scripts/setup_system_packages.sh
echo "setup: done ($(.venv/bin/python --version))"
