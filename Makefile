# The front door: `make up` runs a local cluster, `make test` runs the suite.
# Each target creates .venv and installs what it needs on first use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
ARGS   ?=

.PHONY: up test lint bench install clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed; on Debian/Ubuntu: apt-get install python3-venv"; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); \
	  else exit 1; fi; }
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,lint]'
	@touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,lint,bench]'
	@touch $(BENCH_STAMP)

install: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/foundry up

test: $(STAMP)
	$(PY) -m pytest

# `make bench ARGS=--codec-compare`, `ARGS=--profile`, `ARGS=--quick`: see python -m bench --help
bench: $(BENCH_STAMP)
	$(PY) -m bench $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .foundry .pytest_cache .mypy_cache .ruff_cache
