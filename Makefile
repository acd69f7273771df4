# Everything the project needs is installed by these targets, from a fresh clone with Python 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install fuzz soak bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# A separately packaged third-party plugin; the tests prove it is found through its entry point.
$(BIN)/.example-installed: $(BIN)/.installed examples/ccproxy-example-plugin/pyproject.toml
	$(BIN)/python -m pip install --quiet -e examples/ccproxy-example-plugin
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/sanic app.app --host $(HOST) --port $(PORT) --single-process

test: install $(BIN)/.example-installed
	$(BIN)/python -m pytest

# The property tests with fresh random examples on each run (`make test` replays fixed ones).
# FUZZ_RUNS=n repeats them; a failure prints the example and how to reproduce it.
FUZZ_RUNS ?= 5
fuzz: install
	for i in $$(seq $(FUZZ_RUNS)); do HYPOTHESIS_PROFILE=explore $(BIN)/python -m pytest -p no:cacheprovider \
		tests/test_sse.py tests/translate tests/test_fuzz.py || exit 1; done

# Proxy vs direct upstream, side by side (~5 min; BENCH_ARGS=--quick for ~1 min). Not part of `make test`.
bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# 500 concurrent streams for 60 s through one worker; RSS, fds and tasks must stay flat (~75 s).
soak: install
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .hypothesis
