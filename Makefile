# Two commands on a fresh machine: `make run` (demo data + API and dashboard) and `make test`.
# Installs come from requirements.lock (exact versions with hashes): a fresh machine gets what was tested.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_DB ?= sqlite
PYTEST_ARGS ?=
# pytest-xdist processes: one per core (each has its own databases)
PYTEST_WORKERS ?= 2
HOST ?= 127.0.0.1
PORT ?= 8000
export TASKMETER_DATABASE_URL ?= sqlite:///./taskmeter.db

.PHONY: install lock run test test-all lint typecheck bench clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# Upgrade the pinned versions on purpose: re-resolve pyproject.toml's ranges, then run `make test-all`.
lock:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra test --extra bench --generate-hashes --universal \
	  --python-version 3.11 --upgrade -o requirements.lock

run: install
	$(BIN)/taskmeter demo
	@echo "Dashboard: http://$(HOST):$(PORT)/dashboard  (sign in with the key printed above)"
	$(BIN)/taskmeter serve --host $(HOST) --port $(PORT)

test: install
	TASKMETER_TEST_DB=$(TEST_DB) $(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test-all: install
	$(MAKE) test TEST_DB=sqlite
	$(MAKE) test TEST_DB=postgresql

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/bench_ingest.py

clean:
	rm -rf $(VENV) taskmeter.db taskmeter.db-wal taskmeter.db-shm .pytest_cache .hypothesis
