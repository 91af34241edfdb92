# Gatehouse: the two commands a new user runs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install lint test demo synth bench layer clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Gatehouse needs Python 3.11 or newer (found " + sys.version.split()[0] + ")")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@bash scripts/ensure-postgres.sh
	@bash scripts/ensure-chromium.sh
	@bash scripts/ensure-pgbouncer.sh
	@bash scripts/ensure-sshd.sh
	@touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install lint
	$(BIN)/pytest

demo: install
	$(BIN)/python -m gatehouse.local.demo

synth: install
	$(BIN)/python app.py
	@echo "templates written to cdk.out/"

bench: install
	$(BIN)/python bench/run.py

# Third-party dependencies for the Lambda layer, built without Docker: manylinux aarch64 wheels for
# CPython 3.12 only (infra/core_layer.py: RUNTIME, ARCHITECTURE). Lambda's arm64 runtime is Amazon
# Linux 2023 (glibc 2.34): each --platform is a manylinux tag that glibc accepts, newest first, so
# pip also takes wheels published under the newer PEP 600 names, not only manylinux2014.
LAYER_PLATFORMS := manylinux_2_34_aarch64 manylinux_2_28_aarch64 manylinux_2_17_aarch64 manylinux2014_aarch64
# The layer ships bytecode: /opt is read-only in Lambda, so without it every cold start compiles each
# module it imports (the API's imports take ~1.3 s from source, ~0.3 s from bytecode). Compiled by
# CPython 3.12 (a .pyc is only read by its own minor version), hash-based (PEP 552, checked): the
# asset's zip does not keep file times, so time-stamped .pyc would all be stale in Lambda. Named
# as Lambda sees them (-d /opt/python) and with a fixed hash seed: the same files, the same bytes.
LAMBDA_PYTHON ?= $(firstword $(foreach p,python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12),\
	$(shell $(p) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null && echo $(p))))
layer: install
	rm -rf build/deps-layer
	$(BIN)/pip install -q --no-compile $(addprefix --platform ,$(LAYER_PLATFORMS)) --implementation cp --python-version 3.12 \
		--only-binary=:all: --target build/deps-layer/python \
		boto3==1.44.5 aws-lambda-powertools[tracer]==3.37.0 pydantic==2.14.3 pg8000==1.31.6 requests-aws4auth==1.4.0 \
		cedarpy==4.12.2 pglast==8.7 urllib3==2.8.* asyncssh==2.24.1 bashlex==0.18 slack-sdk==3.47.*
	@if [ -n "$(LAMBDA_PYTHON)" ]; then \
		cd build/deps-layer && PYTHONHASHSEED=0 $(LAMBDA_PYTHON) -m compileall -q -j 0 \
			--invalidation-mode checked-hash -d /opt/python python; \
	else \
		echo "warning: no python3.12 (set LAMBDA_PYTHON): the layer ships no bytecode, each cold start compiles it" >&2; \
	fi

clean:
	rm -rf $(VENV) cdk.out build .gatehouse .bench .pytest_cache .ruff_cache .mypy_cache
