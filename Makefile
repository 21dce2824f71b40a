# Two commands a newcomer needs: `make serve` and `make test`. Both set up .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?=

.PHONY: setup system-deps serve top test lint fuzz soak bench loadtest sanitize config-doc clean

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

# Load test: starts the game server, runs locust headless (a progress line every 3 s), writes
# reports/loadtest/, stops the server. SPAWN (users started per second) defaults to USERS/10, at
# least 10. PORT is the server's loopback port (loadtest and soak; default: a free one; a taken port
# is an error). LOADTEST_ARGS for further loadtests/run.py options (--out, --progress).
# `make loadtest USERS=1000` is the scale check.
USERS ?= 50
SPAWN ?=
TIME  ?= 30s
PORT  ?=
loadtest: $(STAMP)
	$(PY) loadtests/run.py --users $(USERS) $(if $(SPAWN),--spawn-rate $(SPAWN),) --time $(TIME) \
		$(if $(PORT),--port $(PORT),) $(if $(CONFIG),--config $(CONFIG),) $(LOADTEST_ARGS)

# Benchmarks against asyncio and uvloop (needs gcc and taskset; minutes). BENCH_ARGS=--quick for a smoke run.
bench: $(STAMP)
	$(PY) -m benchmarks.run $(if $(PORT),--port $(PORT),) $(BENCH_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Parser fuzzing: the codec property tests with the "fuzz" hypothesis profile (>= 100,000 examples
# each; tens of minutes on 2 cores). FUZZ_EXAMPLES=N to change. They feed bytes to the decoders in
# memory and open no socket, so there is no port to choose.
FUZZ_EXAMPLES ?= 100000
fuzz: $(STAMP)
	RELIABILITY_PROFILE=fuzz RELIABILITY_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider \
		tests/reliability/test_parser.py -k "yields or round_trip or leaves_no_state" $(PYTEST_ARGS)

# Soak: the game server under bots for SOAK_SECONDS (default 600); fails unless RSS, descriptors and
# sessions stay flat. PORT as for loadtest. Reports in reports/soak/.
SOAK_SECONDS ?= 600
soak: $(STAMP)
	$(PY) -m loadtests.soak --seconds $(SOAK_SECONDS) $(if $(PORT),--port $(PORT),) $(SOAK_ARGS)

# The io_uring extension built with AddressSanitizer + UndefinedBehaviorSanitizer, then the suites
# that drive its C (io_uring, streams, server); the normal build is put back whatever the result.
SANITIZE_TESTS ?= tests/test_io_uring.py tests/test_streams.py tests/test_server.py
sanitize: $(STAMP)
	$(PY) framework/io/backends/_uring_build.py --sanitize
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		$(PY) -m pytest -q -p no:cacheprovider $(SANITIZE_TESTS) $(PYTEST_ARGS); \
		status=$$?; $(PY) framework/io/backends/_uring_build.py; exit $$status

# The HTML API reference (pdoc) in build/docs; fails on any pdoc warning.
.PHONY: docs
docs: $(STAMP)
	$(PY) docs/build_api.py build/docs

# docs/CONFIG.md from the settings models (tests/test_config.py fails when it is stale).
config-doc: $(STAMP)
	$(PY) -m framework docs-config > docs/CONFIG.md

# ruff, mypy --strict on framework/ ([tool.mypy] in pyproject.toml), and the CI workflow against
# GitHub's workflow schema (bundled with check-jsonschema: offline).
lint: $(STAMP)
	$(PY) -m ruff check framework examples tests benchmarks loadtests
	$(PY) -m mypy
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/ci.yml

clean:
	rm -rf $(VENV) build *.egg-info framework/io/backends/_uring*.so
