# The two entry points the README promises. Both create .venv on first use.
# On machines with a local CPU wheel (ours), torch must come from `pip install torch==2.13.0`;
# elsewhere set TORCH_SPEC to the build you want (e.g. TORCH_SPEC=torch).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
DATA_DIR ?= ../shared/data
BIN := $(VENV)/bin

.PHONY: setup quickstart test test-slow lint

$(BIN)/harness: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/harness

setup: $(BIN)/harness

quickstart: setup
	HARNESS_DATA_DIR=$(DATA_DIR) $(BIN)/harness quickstart

# The default suite (under 8 minutes on 2 cores), with the slowest tests listed.
test: setup
	HARNESS_DATA_DIR=$${HARNESS_DATA_DIR:-$(DATA_DIR)} $(BIN)/python -m pytest -q --durations=10

# The tests marked slow (Ray, DDP, torch.compile, the real quickstart scale): CI's second step.
test-slow: setup
	HARNESS_DATA_DIR=$${HARNESS_DATA_DIR:-$(DATA_DIR)} $(BIN)/python -m pytest -q -m slow --durations=10

lint: setup
	$(BIN)/ruff check harness tests benchmarks
