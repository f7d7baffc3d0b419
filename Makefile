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

.PHONY: setup demo test test-fast bench clean

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

test: setup $(CHROMIUM)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q

test-fast: setup $(CHROMIUM)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -m "not slow and not ray_cluster"

bench: setup
	$(BIN)/raydund bench extract --out BENCHMARKS.extract.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
