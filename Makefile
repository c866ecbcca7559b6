# The README's two commands: `make lab` and `make test`. Both set everything up on a fresh machine.
SHELL := /bin/bash
PY ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
PIPQ := $(BIN)/pip install -q --disable-pip-version-check
# Build tools must be in the venv first: the package is installed without build isolation
# so that the labextension build reuses the venv's jupyterlab (saves ~20 s and a second download).
BUILD_DEPS := "hatchling>=1.5" "hatch-jupyter-builder>=0.5" "hatch-nodejs-version>=0.3.2" editables "jupyterlab>=4.6,<5"
STAMP := $(VENV)/.gradsight-installed
EXT_SRC := $(shell find extension style \( -name '*.ts' -o -name '*.css' -o -name '*.js' \) -not -name protocol-types.ts) protocol/schema.json \
	protocol/generate-types.js package.json yarn.lock tsconfig.json

.PHONY: lab test setup test-py test-js test-slow lint demo bench chromium clean

# --allow-root only when run as root (containers, this CI machine); jupyter refuses root otherwise
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: setup
	$(BIN)/jupyter lab --notebook-dir=examples $(ROOT_FLAG) $(LAB_ARGS)

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(EXT_SRC)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIPQ) --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PIPQ) "$(TORCH)" $(BUILD_DEPS) 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import torch, jupyterlab" # fail loudly if the installs above failed
	$(PIPQ) --no-build-isolation -e ".[lab,dev]" 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import gradsight"
	cd . && $(BIN)/jlpm install && $(BIN)/jlpm build
	$(BIN)/jupyter labextension develop --overwrite . >/dev/null
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (gradsight)" >/dev/null
	$(BIN)/jupyter labextension list 2>&1 | grep -q "gradsight.*enabled.*OK"
	touch $(STAMP)

chromium:
	@command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q --no-install-recommends chromium fonts-liberation; }

test: setup chromium lint test-js test-py

# Python (ruff) and the extension (eslint + prettier + stylelint, as in the JupyterLab extension template)
lint:
	$(BIN)/ruff check gradsight tests benchmarks examples
	$(BIN)/jlpm lint:check

test-js:
	$(BIN)/jlpm test

test-py:
	$(BIN)/python -m pytest -q tests

# Long sweeps deselected from make test (pytest marker `slow`): the whole OpInfo gradcheck comparison.
test-slow: setup
	$(BIN)/python -m pytest -q -s -m slow tests

demo: setup
	$(BIN)/python -m gradsight.demo examples

bench: setup
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/gradcheck.py

clean:
	rm -rf $(VENV) node_modules lib gradsight/labextension tsconfig.tsbuildinfo test-artifacts
