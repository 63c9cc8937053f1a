# The two commands of the README: `make up` runs slurmless, `make test` runs the checks and tests.
# Each sets up what it needs first (scripts/setup.sh, idempotent).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup up test lint typecheck unit bench clean

setup:
	@bash scripts/setup.sh

up: setup
	$(BIN)/slurmless up

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

unit: setup
	$(BIN)/pytest tests/unit

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
