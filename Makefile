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

# The quick preset (about 10 minutes on 2 cores): small data, a short V and M,
# C trained by CMA-ES in the real environment through V and M, then tested against
# the baselines on held-out episodes. (`07_train_controller.py --dream` trains C in M instead.)
demo: venv
	$(PY) 01_generate_vae_data.py --rollouts 200 --testrollouts 20 --data-dir $(DEMO_DIR)
	$(PY) 02_generate_rnn_data.py --episodes 300 --testepisodes 30 --data-dir $(DEMO_DIR)
	$(PY) 03_train_vae.py --epochs 4 --lr 1e-3 --object-weight 10 --test-frames 1000 --data-dir $(DEMO_DIR) --overwrite
	$(PY) 04_train_rnn.py --mode dream --residual --epochs 30 --batch-size 32 --data-dir $(DEMO_DIR) --overwrite
	$(PY) 05_draw_vae_result.py --data-dir $(DEMO_DIR)
	$(PY) 06_draw_rnn_result.py --mode dream --data-dir $(DEMO_DIR)
	$(PY) 07_train_controller.py --epochs 40 --popsize 32 --trials 8 --eval-every 10 --data-dir $(DEMO_DIR) --overwrite
	$(PY) 08_test_controller.py --episodes 100 --data-dir $(DEMO_DIR)
	$(PY) docs/make_env_figures.py --out $(DEMO_DIR)/results
	@echo
	@echo "demo outputs (in $(DEMO_DIR)):"
	@echo "  vae_data/preview.png, rnn_data/preview.png   the rollouts V and M learn from"
	@echo "  models/vae_loss.png, results/vae_*.png        V: loss curve, reconstructions, samples, traversal"
	@echo "  models/rnn_dream_loss.png, results/rnn_dream_*  M: NLL vs baselines, one-step/open-loop strips, dream GIF"
	@echo "  models/controller_progress.png                C: CMA-ES fitness per generation"
	@echo "  results/controller_best.gif, results/test_*.gif  agents in the real environment"
	@echo "  results/test_controller.json (.md)            agent vs baselines on 100 held-out episodes"
