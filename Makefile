# Two commands from a fresh clone:  `make demo` (set up, run the demo to paper_tables/)  and  `make test`.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
FASHION_MNIST := /usr/share/datasets/fashion-mnist
EMOJI := data/raw/emoji-datasource-google-16.0.0.tgz

.PHONY: setup lock data demo demo-full test lint format dvc-yaml experiments mutation clean

setup: $(VENV)/.installed ## create .venv and install the project with its dev tools

# The exact versions of requirements.lock, each checked against its sha256, then the project itself. An existing
# venv is updated in place: `python3` is then the venv's own (PATH above), which cannot rebuild the venv it runs.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -c "import uvit, torch, torchvision, cleanfid, snakemake, dvc"
	touch $@

# Resolve pyproject.toml afresh in a throwaway venv, freeze it and record each distribution's sha256 from the index.
lock: ## refresh requirements.lock (exact versions with hashes) from pyproject.toml
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -e '.[dev]'
	.lock-venv/bin/pip freeze --all --exclude-editable | grep -v '^pip==' > .lock-venv/freeze.txt  # setuptools: torch needs it
	.lock-venv/bin/pip install --quiet --dry-run --ignore-installed --no-deps --report .lock-venv/report.json \
		-r .lock-venv/freeze.txt
	.lock-venv/bin/python workflow/scripts/lock_env.py .lock-venv/report.json > requirements.lock
	rm -rf .lock-venv

data: ## Fashion-MNIST from Debian when possible (the loader downloads it otherwise)
	@if [ ! -d $(FASHION_MNIST) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; fi

$(EMOJI): ## the Noto emoji with their names (text-to-image demo), from the npm registry
	mkdir -p $(dir $@) && npm pack emoji-datasource-google@16.0.0 --pack-destination $(dir $@) --silent

# A fresh clone carries the committed tables and metrics but none of the artifacts behind them, and Snakemake
# would call those tables up to date: the first run in a checkout rebuilds everything from the data.
FIRST_RUN = $(if $(wildcard .snakemake/metadata/*),,--forceall)

# A run killed with SIGKILL leaves Snakemake's lock behind: released first when no Snakemake runs here.
demo: setup data ## the quick tier (quick_targets in params.yaml) to paper_tables/ (docs/demo.md: its time)
	python workflow/scripts/unlock_stale.py
	snakemake --cores all --config tier=quick $(FIRST_RUN)

demo-full: setup data $(EMOJI) ## every target of params.yaml to paper_tables/ (docs/demo.md: its time)
	python workflow/scripts/unlock_stale.py
	snakemake --cores all $(FIRST_RUN)

lint: setup
	ruff check .
	ruff format --check .
	snakefmt --check Snakefile workflow/rules
	snakemake --lint

test: setup data lint ## lint, trace the committed tables (uvit verify), then the test suite (includes the smoke DAG)
	uvit verify
	pytest -q -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

format: setup
	ruff format .
	ruff check --fix .
	snakefmt Snakefile workflow/rules

# Not in CI or `make test`: hours on 2 CPU cores for all modules (MUTATION_ARGS="--modules diffusion --max-mutants 60").
mutation: setup ## mutation testing (mutmut) of the core modules -> benchmarks/results/mutation.json
	nice -n 19 python benchmarks/mutation.py $(MUTATION_ARGS)

# `dvc exp show` alone has a column for every key of params.yaml and every dependency's hash (~450 in the smoke
# project): keep the scores and the settings that differ between the experiments shown.
EXP_SHOW_DROP := ^(settings|results|data|src|workflow)/|^params\.yaml$$|^metrics/[^:]*$$|^(rev|typ)$$
experiments: ## DVC experiments (dvc exp run -S ...) with their scores and the settings they changed; ARGS=--csv etc.
	dvc exp show --only-changed --drop '$(EXP_SHOW_DROP)' $(ARGS)

dvc-yaml: setup ## regenerate dvc.yaml and experiments/dvc.yaml (templated) from the jobs of params.yaml
	python workflow/scripts/export_dvc.py
