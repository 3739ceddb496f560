#!/usr/bin/env bash
# The edge-export tools (components/edge_exporter.py), outside .venv:
#  * .tools/tfjs-venv: the TF.js converter, requirements-tfjs.lock (tensorflowjs 4.17.0 with
#    the same tensorflow as .venv). In .venv it would downgrade packaging, pytest and
#    google-cloud-bigquery and pull jax, flax and tensorflow-decision-forests; 4.18+ needs
#    tensorflow-hub>=0.16.1, which tfx 1.16 forbids.
#  * js/node_modules: @tensorflow/tfjs-core, -converter and -backend-cpu (pure JS) from
#    js/package-lock.json, which run the TF.js exports under Node for their evaluation.
# Each part is reinstalled only when its lock changed (a stamp holds the lock's checksum).
# Usage: setup_edge.sh UV PYTHON3.10
set -euo pipefail
cd "$(dirname "$0")/.."
UV=$1
PY310=$2

stamp_ok() { [[ -f "$1" ]] && [[ "$(cat "$1")" == "$(sha256sum "$2" | cut -d' ' -f1)" ]]; }
stamp() { sha256sum "$2" | cut -d' ' -f1 > "$1"; }

VENV=.tools/tfjs-venv
if ! stamp_ok "$VENV/.conveyor-lock" requirements-tfjs.lock; then
  echo "setup: installing the TF.js converter into $VENV (requirements-tfjs.lock)"
  mkdir -p .tools
  [[ -x "$VENV/bin/python" ]] || "$UV" venv --quiet --python "$PY310" "$VENV"
  "$UV" pip install --quiet --python "$VENV/bin/python" -r requirements-tfjs.lock
  stamp "$VENV/.conveyor-lock" requirements-tfjs.lock
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup: node/npm not found: TF.js exports (edge_exports: [tfjs]) cannot be evaluated; install Node 18+" >&2
elif ! stamp_ok js/node_modules/.conveyor-lock js/package-lock.json; then
  echo "setup: installing @tensorflow/tfjs (pure JS) into js/node_modules (js/package-lock.json)"
  (cd js && npm ci --no-audit --no-fund --loglevel=error)
  stamp js/node_modules/.conveyor-lock js/package-lock.json
fi
