# One place for the commands the README, CI and the Dockerfile use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build pinned for this machine kind (pip finds it on local disk). Any torch>=2.3 works;
# override e.g. `make TORCH="torch torchvision" install` elsewhere.
TORCH ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= server,worker,dev,benchmarks,lightning

.PHONY: install test lint demo serve

$(VENV)/.installed: pyproject.toml tests/plugins/pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	# The tests' plugin package (a model and datasets registered as entry points, as a user's own
	# package would): tests/test_plugins.py runs them through the API and a worker.
	$(BIN)/pip install --quiet -e tests/plugins
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy app worker edgetune edgetune_cli
	$(BIN)/lint-imports

# Fetches Fashion-MNIST first (edgetune data fetch) when no data root has it.
demo: install
	EDGETUNE=$(BIN)/edgetune PYTHON=$(BIN)/python bash scripts/demo.sh

serve: install
	$(BIN)/edgetune serve
