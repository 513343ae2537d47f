# movierec: `make demo` runs the main job, `make test` the test suite. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests and CI read MovieLens 100K from a local copy (never the network); see README.
SHARED_DATA := $(abspath ../shared/data)
export MOVIEREC_DATASETS ?= $(if $(wildcard $(SHARED_DATA)/ml-100k),$(SHARED_DATA),)
export MLFLOW_DISABLE_TELEMETRY := true
export RAY_AUTH_MODE := disabled
DEMO_HOME ?= $(abspath .cache/demo)

.PHONY: setup test demo bench lint format clean help

help:  ## list targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install pinned requirements (only when they change)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned resolution pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: setup  ## run every test (unit, integration, notebooks, infra)
	$(PY) -m pytest -q

demo: setup  ## the main job on ml-100k, on this machine
	export MOVIEREC_HOME=$(DEMO_HOME); set -e; \
	$(VENV)/bin/movierec data prepare --dataset ml-100k --out $(DEMO_HOME)/data/ml-100k; \
	$(VENV)/bin/movierec train --data $(DEMO_HOME)/data/ml-100k --model pop; \
	$(VENV)/bin/movierec train --data $(DEMO_HOME)/data/ml-100k --model sse-pt; \
	$(VENV)/bin/movierec evaluate --latest 2 --data $(DEMO_HOME)/data/ml-100k \
	  --out $(DEMO_HOME)/evaluation

bench: setup  ## benchmarks (write JSON under bench/results/)
	$(PY) bench/data_pipeline.py
	$(PY) bench/quality.py

lint: setup  ## ruff
	$(VENV)/bin/ruff check lib tests bench

format: setup
	$(VENV)/bin/ruff format lib tests bench

clean:  ## remove caches (keeps .venv)
	rm -rf .cache .pytest_cache .ruff_cache
