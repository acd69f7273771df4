# Everything the project needs is installed by these targets, from a fresh clone with Python 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install soak bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/sanic app.app --host $(HOST) --port $(PORT) --single-process

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info .hypothesis
