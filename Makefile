# Two commands do everything on a fresh machine: `make test` and `make reproduce`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test reproduce reproduce-dnn theory sweep lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

reproduce: $(STAMP)
	$(BIN)/python -m experiments.toy_models

reproduce-dnn: $(STAMP)
	$(BIN)/python -m experiments.dnn_alignment --config digits_small

sweep: $(STAMP)
	$(BIN)/python -m experiments.seed_sweep

theory: $(STAMP)
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
