# Two commands do everything on a fresh machine: `make test` and `make reproduce`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make reproduce` needs only the core and the exact solver; `make test` adds the test extra
# (torch, torchvision, tensorflow and the reference libraries, several GB).
CORE := $(VENV)/.installed-core
STAMP := $(VENV)/.installed

.PHONY: test reproduce reproduce-dnn theory sweep lint format bench clean

# uv installs the wheels in parallel: the test extra (several GB, torch's CUDA libraries among
# them) in about 30 s on a 2-core machine where pip took about 100 s. Like pip --no-compile, it
# compiles no bytecode at install time (Python compiles a module when it is first imported).
UV := $(BIN)/uv pip install --quiet --python $(BIN)/python

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/pip install --quiet 'uv>=0.9'

$(CORE): pyproject.toml | $(BIN)/uv
	$(UV) -e '.[exact]'
	touch $(CORE)

$(STAMP): pyproject.toml | $(BIN)/uv
	$(UV) -e '.[test]'
	touch $(STAMP) $(CORE)

# The suite starts many Python processes (experiment runs, notebook kernels); with bytecode
# written on first import (even where PYTHONDONTWRITEBYTECODE is set), each later one reads it.
test: $(STAMP)
	$(BIN)/ruff check .
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -q

reproduce: $(CORE)
	$(BIN)/python -m experiments.toy_models

reproduce-dnn: $(STAMP)
	$(BIN)/python -m experiments.dnn_alignment --config digits_small

sweep: $(CORE)
	$(BIN)/python -m experiments.seed_sweep

theory: $(CORE)
	$(BIN)/python -m experiments.theory

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.train
	$(BIN)/python -m benchmarks.topk
	$(BIN)/python -m benchmarks.metrics

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
