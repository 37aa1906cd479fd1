# Fresh machine: `make demo` or `make test` (both create .venv and install first).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench reproduce clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	DS_BUILD_OPS=0 $(BIN)/pip install -q -e ".[train,dev,lmms,serve]"
	$(BIN)/pip install -q --no-deps lmms-eval==0.6.1
	$(BIN)/pip install -q --no-deps gradio==6.31.0

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

reproduce: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/reproduce.sh

lint: install
	$(BIN)/ruff check .

bench: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/bench_hidrop_step.py

clean:
	rm -rf checkpoints playground/demo .pytest_cache
