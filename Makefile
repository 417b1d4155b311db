# Every target creates .venv/ with pitguard installed (editable) when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint format clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[deploy,dev]"
	$(BIN)/python -c "import torch, torchvision, timm"  # fails fast on a torch/torchvision mismatch
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pitguard demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n auto --dist loadgroup  # one worker per core (pytest-xdist)

# The training benchmarks on the shared crops (about 12 minutes on 2 cores); JSON under runs/.
bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/train_accuracy.py --out runs/bench-cpu-fast-$$(date +%Y%m%d-%H%M%S)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean-venv:
	rm -rf $(VENV)
