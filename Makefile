PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint bench clean

install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	PATH=$(BIN):$$PATH bash .ci/fetch-compose-schema

test:
	$(BIN)/python -m pytest -q -n 3 --dist loadfile

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench:
	$(BIN)/python -m benchmarks.bench_engine

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache
