# OpenLoRA Node — two commands do everything: `make dev` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup dev test test-py test-contracts contracts lint clean

setup:
	@bash scripts/setup.sh

contracts: setup
	@cd contracts && forge build --quiet

dev: contracts
	@$(VENV)/bin/openlora dev

test: contracts
	@$(VENV)/bin/ruff check node chain inference tests scripts
	@cd contracts && forge test
	@$(PY) -m pytest -q

lint: setup
	@$(VENV)/bin/ruff check node chain inference tests scripts

clean:
	rm -rf contracts/out contracts/cache .pytest_cache
