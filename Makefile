# One venv per dependency set, outside the clone, so CI reruns reuse it.
PY ?= python3
DEPS_HASH := $(shell cat pyproject.toml | sha256sum | cut -c1-12)
VENV ?= $(HOME)/.cache/cliptune/venv-$(DEPS_HASH)
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: venv demo test lint bench clean-demo

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/python -m pip install -q torch torchvision
	$(BIN)/python -m pip install -q -e ".[dev]"
	ln -sfn $(VENV) .venv
	touch $@

venv: $(BIN)/.installed
	@echo "venv ready: $(VENV)"

demo: venv
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

lint: venv
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint --configfile config/demo.yaml

print-venv:
	@echo $(VENV)
