# Two entry points for a fresh Debian/Ubuntu machine with Python 3.11:
#   make demo   install, then build the default prone phantom into out/phantom
#   make test   install everything the tests need, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test install lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { \
	  [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && \
	  $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test,dev]"

demo: install
	$(BIN)/bmbx-plan demo --out out/demo --overwrite

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check bmbx_plan phantoms tests benchmarks
	$(BIN)/ruff format --check bmbx_plan phantoms tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/bench_load.py
	$(BIN)/python benchmarks/bench_segment.py
	$(BIN)/python benchmarks/bench_plan.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
