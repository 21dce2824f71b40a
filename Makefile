# Two commands a newcomer needs: `make serve` and `make test`. Both set up .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?=

.PHONY: setup system-deps serve top test lint fuzz soak bench loadtest clean

# liburing-dev lets the io_uring backend build; without it (or without apt) everything still
# installs and the io_uring backend reports itself unavailable.
system-deps:
	@if [ ! -f /usr/include/liburing.h ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing liburing-dev with apt"; \
		(apt-get update -q && apt-get install -y -q liburing-dev) >/dev/null 2>&1 || \
			echo "warning: could not install liburing-dev; io_uring will fall back to epoll"; \
	fi

$(STAMP): pyproject.toml setup.py
	@$(MAKE) --no-print-directory system-deps
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

# Without CONFIG: console logs for humans (a CONFIG file keeps its own format, JSON in production) and
# metrics on METRICS (for `make top`; METRICS= turns them off).
METRICS ?= 127.0.0.1:9177
serve: $(STAMP)
	$(if $(or $(CONFIG),$(FRAMEWORK_LOGGING__FORMAT)),,FRAMEWORK_LOGGING__FORMAT=console) \
	$(if $(and $(METRICS),$(if $(CONFIG),,1)),FRAMEWORK_METRICS__LISTEN=$(METRICS)) \
	$(PY) -m examples.gameserver $(if $(CONFIG),--config $(CONFIG),)

# Live view of a running server's metrics (`make serve` in another terminal).
top: $(STAMP)
	$(PY) -m framework top --url http://$(METRICS)/metrics

# Load test: starts the game server, runs locust headless, writes reports/loadtest/, stops the server.
USERS ?= 50
SPAWN ?= 10
TIME  ?= 30s
loadtest: $(STAMP)
	$(PY) loadtests/run.py --users $(USERS) --spawn-rate $(SPAWN) --time $(TIME) $(if $(CONFIG),--config $(CONFIG),)

# Benchmarks against asyncio and uvloop (needs gcc and taskset; minutes). BENCH_ARGS=--quick for a smoke run.
bench: $(STAMP)
	$(PY) -m benchmarks.run $(BENCH_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Parser fuzzing: the codec property tests with the "fuzz" hypothesis profile (>= 100,000 examples
# each; tens of minutes on 2 cores). FUZZ_EXAMPLES=N to change.
FUZZ_EXAMPLES ?= 100000
fuzz: $(STAMP)
	RELIABILITY_PROFILE=fuzz RELIABILITY_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider \
		tests/test_reliability_parser.py -k "yields or round_trip or leaves_no_state" $(PYTEST_ARGS)

# Soak: the game server under bots for SOAK_SECONDS (default 600); fails unless RSS, descriptors and
# sessions stay flat. Reports in reports/soak/.
SOAK_SECONDS ?= 600
soak: $(STAMP)
	$(PY) -m loadtests.soak --seconds $(SOAK_SECONDS) $(SOAK_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check framework examples tests benchmarks loadtests

clean:
	rm -rf $(VENV) build *.egg-info framework/io/backends/_uring*.so
