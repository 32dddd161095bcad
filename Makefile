# Vigil: make run (a whole measurement campaign, end to end) and make test (the whole suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all venv test test-fast lint typecheck run lab lab-down bench deps clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# System packages the lab, the broker and the databases need (Debian; no-op when present).
deps:
	bash scripts/install-deps.sh

# Two workers (pytest-xdist): every test under tests/lab/ on one of them, one at a time, in
# file order (they share the session's lab, and its shaped links time transfers); the other
# test modules, and the path lab that shapes nothing, on the other worker (tests/conftest.py).
test: deps venv
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -n 2

test-fast: venv
	$(BIN)/python -m pytest -q -m "not lab and not slow"

lint: venv
	$(BIN)/ruff check agent collector tests lab bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

typecheck: venv
	$(BIN)/mypy

run: deps venv
	$(BIN)/python -m scripts.run_demo $(RUN_ARGS)

lab: venv
	$(BIN)/python -m lab up

lab-down: venv
	$(BIN)/python -m lab down

bench: venv
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.ingest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
