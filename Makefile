# The two commands of the README: `make up` runs slurmless, `make test` runs the checks and tests.
# Each sets up what it needs first (scripts/setup.sh, idempotent); `make test` also installs the
# CPU build of vLLM into .venv-vllm for the end-to-end tests.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup up test lint typecheck unit bench clean

setup:
	@bash scripts/setup.sh

up: setup
	$(BIN)/slurmless up

test:
	@SLURMLESS_WITH_VLLM=1 bash scripts/setup.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

unit: setup
	$(BIN)/pytest tests/unit

clean:
	rm -rf $(VENV) .venv-vllm .mypy_cache .pytest_cache .ruff_cache
