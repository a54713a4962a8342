# The front door: `make up` runs a local cluster, `make test` runs the suite,
# `make unit` only the unit tests (no servers, seconds).
# Each target creates .venv and installs what it needs on first use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
ARGS   ?=

.PHONY: up test unit lint bench install clean prometheus-tools sandbox-tools browser-tools cluster-tools

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed; on Debian/Ubuntu: apt-get install python3-venv"; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); \
	  else exit 1; fi; }
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,lint,otlp]'
	@touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,lint,otlp,bench]'
	@touch $(BENCH_STAMP)

install: $(STAMP)

# The exec handler runs task code under bubblewrap and refuses to run it without.
# Where bwrap is missing and we are root with apt-get, install Debian's package once;
# otherwise exec tasks fail saying why and the sandbox tests skip (fail under CI=true).
sandbox-tools:
	@if ! command -v bwrap >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap (Debian package) for the exec sandbox"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        --no-install-recommends bubblewrap; } >/dev/null 2>&1 \
	      || echo "could not install bubblewrap: exec tasks will fail until it is installed"; \
	  else echo "bubblewrap (bwrap) is missing: exec tasks will fail until it is installed"; fi; \
	fi

up: $(STAMP) sandbox-tools
	$(VENV)/bin/foundry up

# The observability tests run a real Prometheus (prometheus + promtool). Where they
# are missing and we are root with apt-get, install Debian's package once, quietly;
# otherwise those tests skip saying what is missing (in CI, CI=true, they fail).
prometheus-tools:
	@if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing prometheus (Debian package) for the observability tests"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        --no-install-recommends prometheus; } >/dev/null 2>&1 \
	      || echo "could not install prometheus: the observability tests will skip"; \
	  fi; \
	fi

# The status page test drives Debian's headless Chromium over the DevTools protocol. Where it
# is missing and we are root with apt-get, install it once, quietly; otherwise that test
# skips saying what is missing (in CI, CI=true, it fails).
browser-tools:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (Debian package) for the status page test"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        --no-install-recommends chromium; } >/dev/null 2>&1 \
	      || echo "could not install chromium: the status page test will skip"; \
	  fi; \
	fi


# The cluster tests build hosts from network namespaces (iproute2's ip) and run Debian's
# redis-server (built with TLS) and redis-sentinel. Where missing and we are root with
# apt-get, install them once, quietly, without starting their services (policy-rc.d);
# otherwise those tests skip saying what is missing (in CI, CI=true, they fail).
cluster-tools:
	@missing=""; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v redis-sentinel >/dev/null 2>&1 || missing="$$missing redis-sentinel"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing (Debian packages) for the cluster tests"; \
	    made_policy=""; \
	    if [ ! -e /usr/sbin/policy-rc.d ]; then \
	      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1; \
	    fi; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        --no-install-recommends $$missing; } >/dev/null 2>&1 \
	      || echo "could not install$$missing: the cluster tests will skip"; \
	    [ -z "$$made_policy" ] || rm -f /usr/sbin/policy-rc.d; \
	  fi; \
	fi


test: $(STAMP) prometheus-tools sandbox-tools browser-tools cluster-tools
	$(PY) -m pytest

# tests/unit: contracts, policies and parsers; no NATS, Redis, subprocess or network
unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

# `make bench ARGS=--codec-compare`, `ARGS=--profile`, `ARGS=--quick`: see python -m bench --help
bench: $(BENCH_STAMP)
	$(PY) -m bench $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .foundry .pytest_cache .mypy_cache .ruff_cache
