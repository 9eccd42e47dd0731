# The README's two commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp

# Installer chatter (pip notices, build output) goes to $(VENV)/install.log, shown only on failure:
# the first thing `make demo` prints is the agent's answer.
PIP    := $(BIN)/python -m pip --disable-pip-version-check --no-input
export PIP_NO_WARN_SCRIPT_LOCATION := 1

.PHONY: demo test test-busy lint typecheck unit diagrams check bench graphviz venv clean

# A fresh Debian may lack venv (python3-venv) or Graphviz's dot: install them when we can
# (root with apt), else say exactly what is missing.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "statemachine-agent needs Python >= 3.11; $(PYTHON) is $$($(PYTHON) --version 2>&1)." \
	       "Run: make PYTHON=python3.11 ..."; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    v=$$($(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'); \
	    apt-get update -qq && { apt-get install -y -qq python$$v-venv || apt-get install -y -qq python3-venv; } \
	      && $(PYTHON) -m venv $(VENV); \
	  else echo "python's venv module is missing: install it (Debian: apt-get install python3-venv)"; exit 1; fi; }

# pyproject.toml roots the flat layout at "." (package-dir), so this editable install is a plain
# path .pth that mypy and IDEs follow.
$(STAMP): pyproject.toml | $(BIN)/python
	@$(PIP) install -q -e '.[dev]' > $(VENV)/install.log 2>&1 || { \
	  cat $(VENV)/install.log; echo "installing into $(VENV) failed: the log is above (and in $(VENV)/install.log)"; \
	  exit 1; }
	@touch $@

venv: $(STAMP)

graphviz:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Graphviz (Debian package graphviz) for its dot binary"; \
	    apt-get update -qq && apt-get install -y -qq graphviz >/dev/null; \
	  else \
	    echo "Graphviz's dot binary is missing: install it (Debian/Ubuntu: sudo apt-get install graphviz;" \
	         "macOS: brew install graphviz), then run make again"; exit 1; \
	  fi; }

demo: $(STAMP) graphviz
	@$(BIN)/python -m statemachine_agent.examples.research "How does the checker bound loops?" --store runs.db

diagrams: $(STAMP) graphviz
	$(BIN)/python -m statemachine_agent.examples --diagrams diagrams

check: $(STAMP)
	$(BIN)/statemachine-agent check statemachine_agent.examples.research:workflow

lint: $(STAMP)
	$(BIN)/ruff check statemachine_agent tests benchmarks
	$(BIN)/mypy

unit: $(STAMP) graphviz
	$(BIN)/python -m pytest -q

test: lint unit

# The suite beside two busy-looping processes: no test's outcome may depend on the machine's speed.
test-busy: $(STAMP) graphviz
	$(BIN)/python benchmarks/busy.py --busy 2

# Every benchmarks/bench_*.py, in name order; stops at the first that fails.
bench: $(STAMP)
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info

# The durability benchmark against LangGraph and Burr (benchmarks/bench_durable.py). The peers live
# only in their own venv, .venv-bench, so they never become dependencies of statemachine-agent;
# installer chatter goes to .venv-bench/install.log. BENCH_ARGS=--quick for a smoke run.
BENCH_VENV  ?= .venv-bench
BENCH_PEERS := 'langgraph==1.2.*' langgraph-checkpoint-sqlite aiosqlite 'apache-burr==0.43.*'
.PHONY: bench-durable
bench-durable:
	@if [ ! -f $(BENCH_VENV)/.stamp ] || [ pyproject.toml -nt $(BENCH_VENV)/.stamp ] \
	    || [ Makefile -nt $(BENCH_VENV)/.stamp ]; then \
	  $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	    || { echo "bench-durable needs Python >= 3.11: run make PYTHON=python3.11 bench-durable"; exit 1; }; \
	  [ -x $(BENCH_VENV)/bin/python ] || $(PYTHON) -m venv $(BENCH_VENV) \
	    || { echo "python's venv module is missing (Debian: apt-get install python3-venv)"; exit 1; }; \
	  echo "installing LangGraph and Burr into $(BENCH_VENV) (log: $(BENCH_VENV)/install.log)"; \
	  $(BENCH_VENV)/bin/python -m pip --disable-pip-version-check --no-input install -q \
	    $(BENCH_PEERS) -e . > $(BENCH_VENV)/install.log 2>&1 \
	    || { cat $(BENCH_VENV)/install.log; echo "installing into $(BENCH_VENV) failed: the log is above"; \
	         exit 1; }; \
	  touch $(BENCH_VENV)/.stamp; \
	fi
	@$(BENCH_VENV)/bin/python benchmarks/bench_durable.py $(BENCH_ARGS)
