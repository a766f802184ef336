# Two commands a user needs: `make demo` and `make test`. `make venv` is run by both.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: venv test lint demo bench clean-data

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "setuptools<70" wheel
	$(BIN)/pip install --quiet --no-build-isolation -r requirements.txt
	touch $@

test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PY) -m pytest -q

lint: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv
	$(PY) benchmarks/bench_env.py
