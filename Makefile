# Every target creates .venv/ with pitguard installed (editable) when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The line's runtime alone (the base install, no torch) on the oldest Python it supports.
RUNTIME_PYTHON ?= $(shell for p in $$(ls $$(pyenv root 2>/dev/null)/versions/3.10*/bin/python3.10 2>/dev/null) python3.10 $(PYTHON); do $$p -c pass 2>/dev/null && echo $$p && break; done)
# The oldest pins have wheels for Python 3.10 (Humble's) only; another Python takes the newest.
RUNTIME_PINS = $(shell $(RUNTIME_PYTHON) -c 'import sys; print("-c tests/runtime/oldest-pins.txt" if sys.version_info[:2] == (3, 10) else "")')
RUNTIME_VENV := .venv-runtime

.PHONY: demo test test-runtime docs bench lint format clean-venv

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

# A bundle exported by the full install, scored by a fresh base install with the ROS 2 extra
# (pip install '.[ros]') on the oldest pins it supports (tests/runtime/oldest-pins.txt): the
# runtime's tests pass there, torch is not importable there, and pitguard-node runs as its own
# process over real DDS (tests/ros).
test-runtime: $(STAMP)
	rm -rf $(RUNTIME_VENV) .runtime-bundle
	$(BIN)/python tests/runtime/make_bundle.py .runtime-bundle
	$(RUNTIME_PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install -q ".[ros]" pytest $(RUNTIME_PINS)
	! $(RUNTIME_VENV)/bin/python -c "import torch" 2>/dev/null
	PITGUARD_RUNTIME_BUNDLE=.runtime-bundle $(RUNTIME_VENV)/bin/python -m pytest -q -p no:cacheprovider --confcutdir=tests/runtime tests/runtime
	PITGUARD_RUNTIME_BUNDLE=.runtime-bundle $(RUNTIME_VENV)/bin/python -m pytest -q -p no:cacheprovider --confcutdir=tests/ros --durations=5 tests/ros

# The documentation site into site/: the CLI reference generated from the parsers, then MkDocs
# in strict mode (a broken link or a missing page fails the build).
docs: $(STAMP)
	$(BIN)/python -m pitguard.cli.reference docs/cli.md
	$(BIN)/mkdocs build --strict --site-dir site

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
	rm -rf $(VENV) $(RUNTIME_VENV)
