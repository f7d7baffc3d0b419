# The two commands a fresh clone needs (see README):
#   make demo   set up .venv, then ingest CoNLL-2000 and extract MiniLM activations
#   make test   set up .venv, then run the test suite
#
# TORCH: the torch requirement installed before the project. The default is the CPU
# build (pip takes it from local disk on the project's machines); on a GPU machine use
#   make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" demo

PYTHON ?= python3.11
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

# the local data mirror: ../shared/data when it sits beside the checkout
ifneq ($(wildcard ../shared/data),)
export RAYDUND_DATA_MIRROR ?= $(abspath ../shared/data)
endif
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo lint test test-unit test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	# NeuroX 1.0.9 (reference and benchmark): its pins (torch 1.8, numpy 1.19) are obsolete, it runs on ours
	$(BIN)/pip install --quiet --no-deps neurox==1.0.9 imbalanced-learn sklearn-compat
	touch $@

# headless Chromium for the report and browser tests (Debian's package; needs root or sudo)
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

demo: setup
	$(BIN)/raydund demo

# ruff (rules and why: pyproject.toml [tool.ruff]); part of `make test`
lint: setup
	$(BIN)/ruff check .

# everything: lint, then unit, integration and e2e tests (the CI command)
test: lint $(CHROMIUM)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q --durations=15

# pure NumPy/torch tests: no Ray, no lake, no subprocess (seconds)
test-unit: setup
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q tests/unit

# unit + the integration tests not marked slow (under 3 minutes on 2 cores)
test-fast: lint $(CHROMIUM)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q --durations=15 -m "not slow and not ray_cluster" tests/unit tests/integration

bench: setup
	$(BIN)/raydund bench extract --out BENCHMARKS.extract.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
