# One venv per dependency set, outside the clone, so CI reruns reuse it. The
# package itself is not installed there: PYTHONPATH points at this checkout, so
# two clones sharing the venv each run their own code.
PY ?= python3
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEPS_HASH := $(shell cat pyproject.toml | sha256sum | cut -c1-12)
VENV ?= $(HOME)/.cache/cliptune/venv-$(DEPS_HASH)
BIN := $(VENV)/bin
CORES ?= all
export PYTHONPATH := $(CURDIR)/workflow$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: venv demo test test-all test-shipped test-kills test-slurm test-slurm-ci lint bench bench-gpu clean-demo config-docs

$(BIN)/.installed: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "make: '$(PY)' not found. Install Python >= 3.11 (e.g. apt install python3.11 python3.11-venv) and run: make PY=python3.11"; exit 1; }
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "make: cliptune needs Python >= 3.11, '$(PY)' is $$($(PY) -V 2>&1). Install python3.11 (or newer) and run: make PY=python3.11"; exit 1; }
	@$(PY) -c 'import ensurepip, venv' 2>/dev/null || { echo "make: '$(PY) -m venv' is unavailable. Install it (Debian/Ubuntu: apt install python3-venv, or python3.X-venv for your version) and rerun make"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(PY) tools/print_deps.py dev > $(VENV)/requirements.txt
	$(BIN)/python -m pip install -q -r $(VENV)/requirements.txt
	touch $@

venv: $(BIN)/.installed
	@ln -sfn $(VENV) .venv
	@echo "venv ready: $(VENV) (linked as .venv)"

demo: venv
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml

# --durations: the slowest tests stay visible in CI. test-all adds each shipped
# config's own toy `rule all` (marker shipped_rule_all).
# make test: two pytest-xdist workers (one per core); the shared toy run's tests stay
# on one worker (--dist loadgroup) so it is built once.
PYTEST := $(BIN)/python -m pytest -q --durations=25
TEST_WORKERS ?= 2

test: venv
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	$(PYTEST) -n $(TEST_WORKERS) --dist loadgroup -m "not shipped_rule_all" tests

test-all: venv
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	$(PYTEST) -n $(TEST_WORKERS) --dist loadgroup tests

# Only the shipped configs' own toy `rule all` runs (what test-all adds to test).
test-shipped: venv
	$(PYTEST) -n $(TEST_WORKERS) -m shipped_rule_all tests/test_shipped_configs.py

# Opt-in (~7 min): the toy DAG SIGKILLed at KILLS random moments finishes identical.
KILLS ?= 3
test-kills: venv
	CLIPTUNE_KILLS=$(KILLS) $(BIN)/python -m pytest -q -s tests/test_random_kills.py

# Opt-in (root + apt): a throw-away single-node SLURM runs the demo via profiles/slurm.
test-slurm: venv
	CLIPTUNE_SLURM_TEST=1 $(BIN)/python -m pytest -q tests/test_slurm.py

# The same for CI: package setup time-boxed (SLURM_SETUP_LIMIT, 300 s); a setup that
# fails for a reason outside the project prints "SKIP test-slurm: <cause>" and passes.
test-slurm-ci: venv
	PYTHON=$(BIN)/python bash scripts/ci_slurm.sh

# config/README.md key tables, generated from workflow/schemas/config.schema.yaml.
config-docs: venv
	$(BIN)/python tools/config_docs.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint --configfile config/demo.yaml

# Speed claims with their reference implementations; results land in benchmarks/results/.
bench: venv
	$(BIN)/python benchmarks/bench_input_pipeline.py
	$(BIN)/python benchmarks/bench_text_cache.py
	$(BIN)/python benchmarks/bench_train_epoch.py
	$(BIN)/python benchmarks/bench_rerun.py
	$(BIN)/python benchmarks/bench_retrieval.py
	$(BIN)/python benchmarks/bench_batch_loader.py
	$(BIN)/python benchmarks/bench_grad_sync.py
	$(BIN)/python benchmarks/bench_scale.py

# On a GPU: results/gpu.md (at most 8 minutes on one H100); without one, a tiny CPU mode.
bench-gpu: venv
	$(BIN)/python benchmarks/bench_gpu.py

print-venv:
	@echo $(VENV)
