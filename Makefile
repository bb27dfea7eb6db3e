# One place for the project's commands. `make setup` then `make test` on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Exact versions of every dependency come from requirements.lock (made by pip-tools from pyproject's ranges);
# `make lock` refreshes it to the newest compatible releases. torch is left out of the lock on purpose: it is
# installed first, pinned, so that the CPU wheel is used where there is no GPU (a plain `torch` pulls CUDA builds).
TORCH ?= torch==2.13.0
LOCK ?= requirements.lock
PIP_VERSION ?= $(shell grep -m1 "^pip==" $(LOCK) 2>/dev/null || echo pip)


.PHONY: setup system-deps lock test test-all lint docs bench bench-data bench-quick bench-deps quickstart deepspeed-deps \
	gpu-wheels gpu-check

setup: system-deps
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(PIP_VERSION)
	# torch first, pinned: the CPU wheel here; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip check

# Programs some tests drive for real: a PostgreSQL server (the serving store) and headless Chromium (HTML report,
# studio). Installed from Debian's packages when missing and apt is usable (as root); otherwise those tests skip
# and say why.
SYSTEM_PACKAGES ?= postgresql chromium
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing:$$missing"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
			|| echo "warning: could not install$$missing; the tests that need them will skip"; \
	elif [ -n "$$missing" ]; then echo "note: not installed:$$missing (tests that need them skip)"; fi

# Re-resolve pyproject's ranges to today's releases and say what changed (then `make setup test`).
lock:
	cp $(LOCK) $(LOCK).old 2>/dev/null || touch $(LOCK).old
	$(BIN)/pip-compile --quiet --upgrade --extra dev --strip-extras --no-emit-index-url --no-emit-find-links \
		--unsafe-package torch --output-file $(LOCK) pyproject.toml
	$(BIN)/python scripts/lock_diff.py $(LOCK).old $(LOCK)
	rm -f $(LOCK).old

# Two workers on the two cores of a CI machine; loadscope keeps a module's tests (and its module-scoped fixtures:
# trained runs, servers) in one worker.
test:
	$(BIN)/python -m pytest -q -n 2 --dist loadscope

test-all: deepspeed-deps
	$(BIN)/python -m pytest -q -m "not gpu"

# DeepSpeed for its tests on CPU processes (tests/unit/train/test_deepspeed_cpu.py, part of test-all), kept out of
# .venv in .deps/deepspeed: transformers' save_pretrained imports deepspeed whenever it is installed (~2 s and a log
# line per save, in every other test). deepspeed publishes no wheel; pip builds it from source without its ops, and
# its CPU communication op is compiled on first use (minutes, once: into .deps/torch_extensions by the tests).
DEEPSPEED_PKGS ?= deepspeed==0.19.8 hjson==3.1.0 msgpack==1.2.4 ninja==1.13.2 py-cpuinfo==9.0.0 einops==0.8.2
deepspeed-deps:
	@test -d .deps/deepspeed/deepspeed || $(BIN)/python -m pip install -q --no-deps --target .deps/deepspeed \
		$(DEEPSPEED_PKGS) || echo "warning: DeepSpeed could not be installed into .deps/deepspeed; its tests skip"

# The check for a lent GPU machine (docs/training.md, "Checking on a GPU"): `make gpu-wheels` here (PyPI reachable)
# puts the wheels it needs into .whl/, which travels with the working tree; `make gpu-check` there runs it with the
# machine's own python3 (no .venv there) and writes the table to $OUT or bench/results/.
GPU_PY ?= python3
gpu-wheels:
	bash scripts/gpu_wheels.sh
gpu-check:
	$(GPU_PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

lint:
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy
	PYTHONPATH=src $(BIN)/lint-imports --no-cache  # the layers in pyproject.toml [tool.importlinter]

docs:
	$(BIN)/tunelab docs-config > docs/config-reference.md
	$(BIN)/tunelab docs-methods docs/methods.md

quickstart:
	$(BIN)/tunelab quickstart

# Benchmark vs TRL and LLaMA-Factory at equal optimizer steps (bench/README.md). TRL is a benchmark-only dependency:
# installed into .venv without deps. LLaMA-Factory runs from its own venv (bash bench/setup_llamafactory.sh); without
# that venv train_bench.py skips it with a note.
BENCH_LIMIT_30M ?= 200
bench-deps:
	$(BIN)/python -m pip install -q --no-deps -r bench/requirements.txt
	$(BIN)/python -m pip check

bench: bench-deps
	$(BIN)/python bench/train_bench.py --sizes tiny-4m --match-steps
	$(BIN)/python bench/train_bench.py --sizes tiny-30m --limit $(BENCH_LIMIT_30M) --match-steps
	$(BIN)/python bench/generate.py

bench-data:  # the data path and the data check at 10k and 100k records (bench/data_scale.py; LLaMA-Factory: bench/setup_llamafactory.sh)
	$(BIN)/python bench/data_scale.py --sizes 10000 100000

bench-quick: bench-deps
	$(BIN)/python bench/train_bench.py --quick
