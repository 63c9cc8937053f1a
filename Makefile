# The two commands of the README: `make up` runs slurmless, `make test` runs the checks and tests.
# Each sets up what it needs first (scripts/setup.sh, idempotent); `make test` also installs the
# CPU build of vLLM into .venv-vllm for the end-to-end tests.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup up test matrix lint typecheck unit bench clean

setup:
	@bash scripts/setup.sh

up: setup
	$(BIN)/slurmless up

test:
	@SLURMLESS_WITH_VLLM=1 SLURMLESS_WITH_PYSLURM=1 bash scripts/setup.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

# Every (Slurm version, backend) pair of tests/matrix; its table is printed at the end and written to
# matrix-table.md (copied into the README by hand).
matrix:
	@SLURMLESS_WITH_PYSLURM=1 SLURMLESS_ROOTFS="24.11 26.05" bash scripts/setup.sh
	SLURMLESS_MATRIX=full SLURMLESS_MATRIX_TABLE=matrix-table.md $(BIN)/pytest tests/matrix

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

unit: setup
	$(BIN)/pytest tests/unit

clean:
	rm -rf $(VENV) .venv-vllm .mypy_cache .pytest_cache .ruff_cache
