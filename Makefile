# Everything the project needs is installed by these targets, from a fresh clone with Python 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install fuzz soak bench clean

# `make run` gets what running needs, `make test` adds the test extras to the same venv.
# (The uninstall and the rm clear what a checkout made before the rename to ccproxy-core, and
# before the tests stopped installing their sample plugin, still holds: both add plugins to `make run`.)
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip uninstall --quiet --yes ccproxy ccproxy-example-plugin 2>/dev/null || true
	rm -rf ccproxy.egg-info
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# What a developer works with: the service and the test extras.
install: $(BIN)/.installed-test

run: $(BIN)/.installed
	$(BIN)/sanic app.app --host $(HOST) --port $(PORT) --single-process

# The tests' sample third-party plugin (examples/ccproxy-example-plugin) is not installed into
# .venv: tests/conftest.py installs it into a directory of its own for the test run only.
test: $(BIN)/.installed-test
	$(BIN)/python -m pytest

# The property tests with fresh random examples on each run (`make test` replays fixed ones).
# FUZZ_RUNS=n repeats them; a failure prints the example and how to reproduce it.
FUZZ_RUNS ?= 5
fuzz: $(BIN)/.installed-test
	for i in $$(seq $(FUZZ_RUNS)); do HYPOTHESIS_PROFILE=explore $(BIN)/python -m pytest -p no:cacheprovider \
		tests/test_sse.py tests/translate tests/test_fuzz.py tests/test_count_tokens.py tests/test_otel.py \
		|| exit 1; done

# Proxy vs Sanic alone and a direct upstream, side by side (~8 min; BENCH_ARGS=--quick ~2.5 min). Not part of `make test`.
bench: $(BIN)/.installed-test
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# 500 concurrent streams for 60 s through one worker; RSS, fds and tasks must stay flat (~75 s).
soak: $(BIN)/.installed-test
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .hypothesis
