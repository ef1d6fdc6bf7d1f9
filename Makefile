PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# No .pyc files at install time: Python writes them on first import, and only for the
# modules that are imported, which is a fraction of what pip would compile up front.
PIP := $(BIN)/python -m pip install --quiet --no-compile
# Two stamps, so each command installs only what it uses: serving needs the runtime
# dependencies (pyproject's [project.dependencies]); tests, lint, docs and benches add the
# dev extra. Each reinstalls when pyproject.toml changes, and is a no-op otherwise.
SERVE := $(VENV)/.serve
DEV := $(VENV)/.dev

.PHONY: serve test lint bench engine docs clean

# A current pip first: it resolves these dependencies with about half the CPU of the one
# venv ships, more than paying for its own install.
$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH (or run: make PY=python3 ...)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(PIP) --upgrade pip

$(SERVE): pyproject.toml | $(BIN)/python
	$(PIP) -e .
	@touch $@

# '.[dev]' includes the runtime dependencies, so it brings the serve stamp up to date too.
$(DEV): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[dev]'
	@touch $(SERVE) $@

# The single stamp older checkouts and notes name: the same as the dev one.
$(VENV)/.installed: $(DEV)
	@touch $@

serve: $(SERVE)
	$(BIN)/cutproxy serve --host 127.0.0.1 --port 8080 --demo

engine: $(SERVE)
	$(BIN)/cutproxy engine --host 127.0.0.1 --port 9000

lint: $(DEV)
	$(BIN)/ruff check proxy tests
	$(BIN)/ruff format --check proxy tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(DEV)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } || { echo 'make bench needs wrk (apt-get install wrk)'; exit 1; }
	$(BIN)/python -m tests.bench

# The generated parts of docs/: the settings tables in docs/settings.md and docs/engine.md.
docs: $(DEV)
	$(BIN)/python -m tests.sync_docs

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
