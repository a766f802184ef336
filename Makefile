# Two commands a user needs: `make demo` and `make test`. `make venv` is run by both.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: venv test lint demo bench

# The quick preset: every step at a size that runs in minutes on 2 cores.
DEMO_DIR ?= data/demo

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "setuptools<70" wheel
	$(BIN)/pip install --quiet --no-build-isolation -r requirements.txt
	touch $@

# Ray is optional for users (--backend ray); the tests cover it, so `make test` installs it.
$(VENV)/.ray-installed: $(VENV)/.installed requirements-ray.txt
	$(BIN)/pip install --quiet -r requirements-ray.txt
	touch $@

test: venv $(VENV)/.ray-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PY) -m pytest -q

lint: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv
	$(PY) benchmarks/bench_env.py

demo: venv
	$(PY) 01_generate_vae_data.py --rollouts 200 --testrollouts 20 --data-dir $(DEMO_DIR)
	$(PY) 02_generate_rnn_data.py --episodes 200 --testepisodes 20 --data-dir $(DEMO_DIR)
	$(PY) docs/make_env_figures.py --out $(DEMO_DIR)/results
	@echo
	@echo "demo outputs:"
	@echo "  $(DEMO_DIR)/vae_data/preview.png   frames of the first V rollouts"
	@echo "  $(DEMO_DIR)/rnn_data/preview.png   frames of the first M episodes"
	@echo "  $(DEMO_DIR)/results/env_strip.png  an oracle episode: global view + 64x64 observations"
	@echo "  $(DEMO_DIR)/results/env_episode.gif the same episode as a GIF"
