PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint bench engine docs clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH (or run: make PY=python3 ...)"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

serve: $(STAMP)
	$(BIN)/cutproxy serve --host 127.0.0.1 --port 8080 --demo

engine: $(STAMP)
	$(BIN)/cutproxy engine --host 127.0.0.1 --port 9000

lint: $(STAMP)
	$(BIN)/ruff check proxy tests
	$(BIN)/ruff format --check proxy tests
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } || { echo 'make bench needs wrk (apt-get install wrk)'; exit 1; }
	$(BIN)/python -m tests.bench

docs: $(STAMP)
	$(BIN)/python -m tests.sync_docs

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
