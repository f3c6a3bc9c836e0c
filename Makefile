# Every target creates .venv on first use; a fresh machine needs only Python 3.11+ and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .demo

.PHONY: demo test test-unit lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[region,aws,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py --data-dir $(DEMO_DIR)
	$(BIN)/python examples/jitr_demo.py --data-dir $(DEMO_DIR)/jitr
	$(BIN)/python examples/rules_demo.py --data-dir $(DEMO_DIR)/rules

# Everything: lint, the pure tests and the end-to-end ones (real fleets in subprocesses, ~11 min).
test: lint
	$(BIN)/pytest

# The pure tests only (no sockets, no processes: the conftest fails one that reaches out), in
# about a minute on 2 busy cores, most of it hypothesis examples.
test-unit: $(STAMP)
	$(BIN)/pytest -m "not e2e" --hypothesis-profile=quick

# lint-imports checks the layers contract in pyproject's [tool.importlinter].
lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/shadow_updates.py
	$(BIN)/python bench/broker_overhead.py
	$(BIN)/python bench/failover.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
