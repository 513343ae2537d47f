# movierec: `make demo` runs the main job, `make test` the test suite. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# Tests and CI read MovieLens 100K from a local copy (never the network); see README.
SHARED_DATA := $(abspath ../shared/data)
export MOVIEREC_DATASETS ?= $(if $(wildcard $(SHARED_DATA)/ml-100k),$(SHARED_DATA),)
export MLFLOW_DISABLE_TELEMETRY := true
export RAY_AUTH_MODE := disabled
DEMO_HOME ?= $(abspath .cache/demo)

.PHONY: setup browser-deps pg-deps wrk-deps infra-deps check-infra test demo demo-clean bench reliability lint format clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install pinned requirements (only when they change)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, the CPU build: from PyPI alone, Linux gets a multi-GB CUDA build.
	# PyTorch's CPU index is added when it answers (a machine that only reaches PyPI or a
	# local mirror installs whatever torch==2.13.0 those offer).
	$(PY) -m pip install --quiet torch==2.13.0 $$(curl -fsS --max-time 10 -o /dev/null \
	  $(TORCH_CPU_INDEX)/torch/ 2>/dev/null && echo --extra-index-url $(TORCH_CPU_INDEX))
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Debian packages some tests need, best effort (.ci/debian-deps): without root or apt-get it
# says why, and those tests skip (outside CI; with CI set they fail instead).
# Chromium for the browser tests (never `playwright install`: it downloads a browser).
CHROMIUM := /usr/bin/chromium
browser-deps:  ## install Chromium from Debian for the browser tests (root only)
	@.ci/debian-deps browser-deps chromium '$(CHROMIUM)' "browser tests"

# wrk for the soak test (and bench/serve.py): a load generator from Debian.
wrk-deps:  ## install wrk from Debian for the soak test (root only)
	@.ci/debian-deps wrk-deps wrk '/usr/bin/wrk' "the soak test"

# PostgreSQL for the feedback-store tests (they start a throwaway cluster with initdb/pg_ctl).
pg-deps:  ## install PostgreSQL from Debian for the feedback-store tests (root only)
	@.ci/debian-deps pg-deps postgresql '/usr/lib/postgresql/*/bin/initdb' "PostgreSQL tests"

# Offline infrastructure tooling: checkov in its own venv (it downgrades packages the main
# venv pins) and the Ansible collections our playbooks use, extracted from the pinned
# `ansible` wheel because Galaxy is unreachable from the build machines.
CHECKOV_VENV := .venv-checkov
CHECKOV_VERSION := 3.3.30
ANSIBLE_BUNDLE_VERSION := 12.3.0
export ANSIBLE_COLLECTIONS_PATH := $(abspath .cache/ansible)
COLLECTIONS_STAMP := .cache/ansible/.installed-$(ANSIBLE_BUNDLE_VERSION)
infra-deps: setup $(CHECKOV_VENV)/.installed $(COLLECTIONS_STAMP)  ## checkov venv + Ansible collections (offline validation)

$(CHECKOV_VENV)/.installed:
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $@

$(COLLECTIONS_STAMP): ansible/requirements.yml
	mkdir -p .cache/ansible/wheel
	$(PY) -m pip download --quiet --no-deps ansible==$(ANSIBLE_BUNDLE_VERSION) -d .cache/ansible/wheel
	$(PY) -c 'import sys, zipfile, yaml; \
	  wanted = [c["name"].replace(".", "/") for c in yaml.safe_load(open("ansible/requirements.yml"))["collections"]]; \
	  z = zipfile.ZipFile(next(__import__("pathlib").Path(".cache/ansible/wheel").glob("*.whl"))); \
	  z.extractall(".cache/ansible", [n for n in z.namelist() if any(n.startswith("ansible_collections/" + w + "/") for w in wanted)])'
	touch $@

check-infra: infra-deps  ## offline validation of tf/, ansible/, k8s/, workflows/, docker/
	$(PY) -m pytest -q tests/infra

test: setup browser-deps pg-deps wrk-deps infra-deps  ## run every test (unit, integration, notebooks, browser)
	$(PY) -m pytest -q

demo: setup  ## the whole lifecycle loop on ml-100k here (DEMO_ARGS=--no-keep stops the platform)
	MOVIEREC_HOME=$(DEMO_HOME) $(VENV)/bin/movierec demo --dataset ml-100k $(DEMO_ARGS)

demo-clean:  ## stop the demo platform and delete its state (DEMO_HOME): the next make demo starts over
	-[ -x $(VENV)/bin/movierec ] && MOVIEREC_HOME=$(DEMO_HOME) $(VENV)/bin/movierec platform down
	rm -rf $(DEMO_HOME)

bench: setup  ## benchmarks (write JSON under bench/results/)
	$(PY) bench/data_pipeline.py
	$(PY) bench/quality.py

reliability: setup  ## fuzz, 10-min soak, faults, bad data, security -> bench/results/reliability.json
	$(PY) bench/reliability.py $(RELIABILITY_ARGS)

lint: setup  ## ruff
	$(VENV)/bin/ruff check lib tests bench

format: setup
	$(VENV)/bin/ruff format lib tests bench

clean:  ## remove caches (keeps .venv)
	rm -rf .cache .pytest_cache .ruff_cache
