# Conveyor: `make demo` and `make test` set everything up from a fresh clone.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.conveyor-installed

.PHONY: setup demo test test-fast lock bench clean

setup: $(STAMP)

# Reinstall only when the lock or setup.py changed, so a second `make setup` takes seconds.
$(STAMP): requirements.lock setup.py scripts/setup.sh scripts/setup_edge.sh scripts/setup_system_packages.sh requirements-tfjs.lock js/package-lock.json
	bash scripts/setup.sh
	touch $(STAMP)

demo: setup
	$(VENV)/bin/conveyor run image

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=20 tests

# The unit tier only: pure functions, no TFX run, no server (one process).
test-fast: setup
	$(PY) -m pytest -q tests/unit

lock:
	bash scripts/setup.sh --lock

bench: setup
	$(PY) bench/pipeline.py

clean:
	rm -rf $(VENV) .tools js/node_modules conveyor_home
