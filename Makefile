# One place for the project's commands. `make setup` then `make test` on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test test-all lint docs bench bench-quick bench-deps quickstart

setup:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel here; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"

test:
	$(BIN)/python -m pytest -q

test-all:
	$(BIN)/python -m pytest -q -m "not gpu"

lint:
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

docs:
	$(BIN)/tunelab docs-config > docs/config-reference.md

quickstart:
	$(BIN)/tunelab quickstart

# Benchmark vs TRL (bench/README.md). TRL is a benchmark-only dependency: installed into .venv without deps.
BENCH_LIMIT_30M ?= 200
bench-deps:
	$(BIN)/python -m pip install -q --no-deps -r bench/requirements.txt
	$(BIN)/python -m pip check

bench: bench-deps
	$(BIN)/python bench/train_bench.py --sizes tiny-4m
	$(BIN)/python bench/train_bench.py --sizes tiny-30m --limit $(BENCH_LIMIT_30M)
	$(BIN)/python bench/generate.py

bench-quick: bench-deps
	$(BIN)/python bench/train_bench.py --quick
