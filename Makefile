# Two commands on a fresh machine: `make run` (demo data + API on 127.0.0.1:8000) and `make test`.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_DB ?= sqlite
PYTEST_ARGS ?=
export TASKMETER_DATABASE_URL ?= sqlite:///./taskmeter.db

.PHONY: install run test test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/taskmeter demo
	$(BIN)/taskmeter serve --host 127.0.0.1 --port 8000

test: install
	TASKMETER_TEST_DB=$(TEST_DB) $(BIN)/pytest $(PYTEST_ARGS)

test-all: install
	$(MAKE) test TEST_DB=sqlite
	$(MAKE) test TEST_DB=postgresql

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/bench_ingest.py

clean:
	rm -rf $(VENV) taskmeter.db taskmeter.db-wal taskmeter.db-shm .pytest_cache .hypothesis
