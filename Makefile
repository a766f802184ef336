# Two commands a user needs: `make demo` and `make test`. `make venv` is run by both.
# The newest Python 3.11+ that actually runs (a pyenv shim can answer `command -v` and
# still fail), or PYTHON=/path/to/python3.X. 3.11, 3.12 and 3.13 are supported.
PY_CANDIDATES := python3.13 python3.12 python3.11 python3
PY_IS_NEW_ENOUGH := -c 'import sys; sys.exit(sys.version_info < (3, 11))'
PYTHON ?= $(shell for p in $(PY_CANDIDATES); do \
	$$p $(PY_IS_NEW_ENOUGH) >/dev/null 2>&1 && { command -v $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
# make test's priority: nice -n 10 where `nice` exists (NICE= runs it at normal priority)
NICE   ?= $(if $(shell command -v nice),nice -n 10)

.PHONY: venv venv-gpu test lint demo bench agent paper docs-results docs-results-paper

# The quick preset: every step at a size that runs in minutes on 2 cores.
DEMO_DIR ?= data/demo
# `make demo GPU=0` runs V, M and C on CUDA GPU 0 (after `make venv-gpu CUDA=12|13`).
GPU ?= -1
# `make venv-gpu CUDA=13` (or 12) adds the CuPy wheel for that CUDA to .venv.
CUDA ?= 13

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@if [ -z "$(PYTHON)" ]; then \
		echo "make: no Python 3.11 or newer runs here (tried $(PY_CANDIDATES)); install one, or pass PYTHON=/path/to/python3.X" >&2; exit 2; \
	elif ! "$(PYTHON)" $(PY_IS_NEW_ENOUGH) >/dev/null 2>&1; then \
		echo "make: PYTHON=$(PYTHON) is not a working Python 3.11 or newer ($$("$(PYTHON)" -V 2>&1 | head -1)); pass PYTHON=/path/to/python3.11, 3.12 or 3.13" >&2; exit 2; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "setuptools<70" wheel
	$(BIN)/pip install --quiet --no-build-isolation -r requirements.txt
	touch $@

venv-gpu: venv
	@if [ ! -f requirements-cuda$(CUDA).txt ]; then \
		echo "make: CUDA=$(CUDA) is not supported; use CUDA=12 or CUDA=13 (see nvidia-smi)" >&2; exit 2; fi
	$(BIN)/pip install --quiet -r requirements-cuda$(CUDA).txt

# Ray is optional for users (--backend ray); the tests cover it, so `make test` installs it.
$(VENV)/.ray-installed: $(VENV)/.installed requirements-ray.txt
	$(BIN)/pip install --quiet -r requirements-ray.txt
	touch $@

# pytest runs one worker per core (pytest-xdist), each test file on one worker (its
# module fixtures built once), and each worker with one BLAS and kernel thread, so the
# workers do not fight over the cores (tests that check threading pass their own counts).
# Under `nice`: alone it runs as fast, and beside a training run it gives way to it (the
# training's thread count ignores niced work: lib/kernels/runtime.py).
test: venv $(VENV)/.ray-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	OPENBLAS_NUM_THREADS=1 $(NICE) $(PY) -m pytest -q -n auto --dist loadfile

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
	$(PY) 03_train_vae.py --epochs 4 --lr 1e-3 --object-weight 10 --test-frames 1000 --data-dir $(DEMO_DIR) --overwrite --gpu $(GPU)
	$(PY) 04_train_rnn.py --mode dream --residual --epochs 30 --batch-size 32 --data-dir $(DEMO_DIR) --overwrite --gpu $(GPU)
	$(PY) 05_draw_vae_result.py --data-dir $(DEMO_DIR) --gpu $(GPU)
	$(PY) 06_draw_rnn_result.py --mode dream --data-dir $(DEMO_DIR) --gpu $(GPU)
	$(PY) 07_train_controller.py --epochs 40 --popsize 32 --trials 8 --eval-every 10 --data-dir $(DEMO_DIR) --overwrite --gpu $(GPU)
	$(PY) 08_test_controller.py --episodes 100 --data-dir $(DEMO_DIR) --gpu $(GPU)
	$(PY) tools/make_env_figures.py --out $(DEMO_DIR)/results
	@echo
	@echo "demo outputs (in $(DEMO_DIR)):"
	@echo "  vae_data/preview.png, rnn_data/preview.png   the rollouts V and M learn from"
	@echo "  models/vae_loss.png, results/vae_*.png        V: loss curve, reconstructions, samples, traversal"
	@echo "  models/rnn_dream_loss.png, results/rnn_dream_*  M: NLL vs baselines, one-step/open-loop strips, dream GIF"
	@echo "  models/controller_progress.png                C: CMA-ES fitness per generation"
	@echo "  results/controller_best.gif, results/test_*.gif  agents in the real environment"
	@echo "  results/test_controller.json (.md)            agent vs baselines on 100 held-out episodes"
	@echo "  runs/vae, runs/rnn_dream, runs/controller      TensorBoard curves: tensorboard --logdir $(DEMO_DIR)/runs"

# The trained agent (README "Results"): the recipe behind the README's results table, in
# data/ (the scripts' default), so a plain `08_test_controller.py` tests it. Each step
# leaves a stamp in data/.agent/; rerunning `make agent` after an interruption skips the
# finished steps and resumes the interrupted one from its snapshot (03, 04, 07) or from
# the rollouts already written (01, 02). Wall times per step: data/.agent/times.txt.
AGENT_DIR ?= data
A := $(AGENT_DIR)/.agent
AGENT_ROLLOUTS ?= 700
AGENT_EPISODES ?= 3000
AGENT_V_EPOCHS ?= 2
# > 0: V's frames are labelled with the oracle's action (01 --labels oracle) and V learns
# to predict it linearly from z beside reconstruction (03 --task-weight); 0: the paper's V
AGENT_TASK_WEIGHT ?= 1000
AGENT_Z_SIZE ?= 128
# K > 0: a spatial z, 6 x 6 x K (03 --spatial K; docs/experiments.md); 0: V's dense z of AGENT_Z_SIZE
AGENT_SPATIAL ?= 8
# The spatial z's map, 6 x 6 (cells 1 m apart) or 14 x 14 (0.5 m; 03 --map-side)
AGENT_MAP_SIDE ?= 6
AGENT_GOAL_WEIGHT ?= 1
# M's architecture (04's flags): the map M that moves with the robot, trained on V's means
# and on its own 40-step open loop, which gave the dream-trained C 63 % against the dense
# M's 8 % (docs/experiments.md); the paper's dense M: AGENT_M_FLAGS=--residual AGENT_M_EPOCHS=20
AGENT_M_FLAGS ?= --arch map --z-source mean --map-head-kernel 3 --ss-max 0 --rollout-steps 40 --rollout-starts 2 --rollout-weight 3
AGENT_M_EPOCHS ?= 8
# > 0: M's episodes are labelled with the oracle's action (02 --labels oracle) and M learns
# to predict it linearly from [z, h], C's input (04 --task-weight); 0: the paper's M
AGENT_M_TASK_WEIGHT ?= 0
AGENT_C_GENERATIONS ?= 50
# DAgger iterations of C's imitation of the oracle (07 --imitate-iterations; docs/experiments.md)
AGENT_C_IMITATION_ITERATIONS ?= 10
# The privileged teacher C imitates (07 --imitate; lib/env/policies.py): the oracle with
# wider clearance from people, which a linear C imitates with fewer collisions
AGENT_C_TEACHER ?= cautious_oracle
AGENT_DREAM_GENERATIONS ?= 100
# The planner's look-ahead heads (07b_train_lookahead.py, which by default lets them read
# the frames' centre beside z and h, through a small convolutional trunk): episodes per
# round of play and labelling, rounds (a second would play the planner with the first
# round's heads; one did as well as two), and heads in the ensemble. On the same rows,
# one conv head collided in 2.5 % of 4,000 validation episodes, one dense head reading
# the same pixels in 3.95 %, one without pixels in 5.8 % (docs/experiments.md)
AGENT_LOOKAHEAD_EPISODES ?= 20000
AGENT_LOOKAHEAD_ROUNDS ?= 1
AGENT_LOOKAHEAD_HEADS ?= 3
AGENT_TEST_EPISODES ?= 500
# M's check scores it on this many held-out episodes of 02's policy (their own seed, 7),
# not 02's 50: about 130 collisions, so its AUC's 90 % interval is about +-0.02
AGENT_CHECK_EPISODES ?= 500
# $(call resume_in,DIR,SNAPSHOT): --resume when DIR/models/SNAPSHOT exists (the step was
# interrupted), else a fresh run.
resume_in = $(if $(wildcard $(1)/models/$(2)),--resume,--overwrite)
continue_or_start = $(call resume_in,$(AGENT_DIR),$(1))
# $(call stamped,STAMPS,RECIPE,NAME,COMMAND): runs COMMAND, logs its wall time in
# STAMPS/times.txt, stamps NAME as done there. `step` is `make agent`'s.
stamped = @mkdir -p $(1); echo "== $(2) step $(3): $(4)"; s=$$(date +%s); $(4) && \
	echo "$(3) $$(( $$(date +%s) - s )) s" >> $(1)/times.txt && touch $(1)/$(3).done
step = $(call stamped,$(A),agent,$(1),$(2))

agent: $(A)/08.done
	@echo; echo "wall time per step (s):"; cat $(A)/times.txt
	@echo "results: $(AGENT_DIR)/results/test_controller.md (5 people; linear C and the planner), test_controller_8humans.md, test_controller_dream.md"

$(A)/01.done: | venv
	$(call step,01,$(PY) 01_generate_vae_data.py --rollouts $(AGENT_ROLLOUTS) --testrollouts 30 $(if $(filter-out 0,$(AGENT_TASK_WEIGHT)),--labels oracle) --data-dir $(AGENT_DIR))
$(A)/02.done: $(A)/01.done
	$(call step,02,$(PY) 02_generate_rnn_data.py --episodes $(AGENT_EPISODES) --testepisodes 50 $(if $(filter-out 0,$(AGENT_M_TASK_WEIGHT)),--labels oracle) --data-dir $(AGENT_DIR))
$(A)/03.done: $(A)/02.done
	$(call step,03,$(PY) 03_train_vae.py --epochs $(AGENT_V_EPOCHS) $(if $(filter-out 0,$(AGENT_SPATIAL)),--spatial $(AGENT_SPATIAL) --map-side $(AGENT_MAP_SIDE),--z-size $(AGENT_Z_SIZE)) --lr 1e-3 --object-weight 50 --goal-weight $(AGENT_GOAL_WEIGHT) --task-weight $(AGENT_TASK_WEIGHT) --test-frames 1000 --data-dir $(AGENT_DIR) $(call continue_or_start,vae_snapshot.npz))
$(A)/04.done: $(A)/03.done
	$(call step,04,$(PY) 04_train_rnn.py --mode dream $(AGENT_M_FLAGS) --outcome-head --epochs $(AGENT_M_EPOCHS) --batch-size 32 --task-weight $(AGENT_M_TASK_WEIGHT) --data-dir $(AGENT_DIR) $(call continue_or_start,rnn_dream_snapshot.npz))
$(A)/diagnostics.done: $(A)/04.done
	$(call step,diagnostics,$(PY) 05_draw_vae_result.py --data-dir $(AGENT_DIR) && $(PY) 06_draw_rnn_result.py --mode dream --data-dir $(AGENT_DIR) && $(PY) diagnostics/probe_features.py --episodes 300 --pixels --data-dir $(AGENT_DIR))
$(A)/inputs.done: $(A)/diagnostics.done
	$(call step,inputs,$(PY) diagnostics/probe_controller.py --teacher $(AGENT_C_TEACHER) --iterations $(AGENT_C_IMITATION_ITERATIONS) --data-dir $(AGENT_DIR))
$(A)/07.done: $(A)/inputs.done
	$(call step,07,$(PY) 07_train_controller.py --imitate $(AGENT_C_TEACHER) --imitate-iterations $(AGENT_C_IMITATION_ITERATIONS) --epochs $(AGENT_C_GENERATIONS) --sigma 0.02 --popsize 32 --trials 16 --eval-every 10 --eval-episodes 200 --data-dir $(AGENT_DIR) $(call continue_or_start,controller_es.npz))
$(A)/07dream.done: $(A)/07.done
	$(call step,07dream,$(PY) 07_train_controller.py --dream --name controller_dream --epochs $(AGENT_DREAM_GENERATIONS) --popsize 32 --trials 8 --eval-every 10 --data-dir $(AGENT_DIR) $(call continue_or_start,controller_dream_es.npz))
$(A)/check.done: $(A)/07dream.done
	$(call step,check,$(PY) 02_generate_rnn_data.py --episodes 1 --testepisodes $(AGENT_CHECK_EPISODES) --seed 7 --data-dir $(AGENT_DIR)/heldout && \
		$(PY) diagnostics/check_world_model.py --held-out $(AGENT_DIR)/heldout --data-dir $(AGENT_DIR))
$(A)/lookahead.done: $(A)/check.done
	$(call step,lookahead,$(PY) 07b_train_lookahead.py --episodes $(AGENT_LOOKAHEAD_EPISODES) --rounds $(AGENT_LOOKAHEAD_ROUNDS) --heads $(AGENT_LOOKAHEAD_HEADS) --data-dir $(AGENT_DIR) $(call continue_or_start,lookahead_snapshot.npz))
$(A)/08.done: $(A)/lookahead.done
	$(call step,08,$(PY) 08_test_controller.py --planner --episodes $(AGENT_TEST_EPISODES) --data-dir $(AGENT_DIR) && \
		$(PY) 08_test_controller.py --planner --episodes $(AGENT_TEST_EPISODES) --n-humans 8 --record 1 --out $(AGENT_DIR)/results/test_controller_8humans.json --data-dir $(AGENT_DIR) && \
		$(PY) 08_test_controller.py --episodes $(AGENT_TEST_EPISODES) --controller controller_dream --agent-only --record 1 --out $(AGENT_DIR)/results/test_controller_dream.json --data-dir $(AGENT_DIR))

# The paper's recipe (issue 28): V, M and C from pixels and reward alone, no label from
# the true state. 01 and 02 collect with their default `mixed` policy (any policy may
# collect data; per episode random, Brownian, or a noisy greedy_avoid); V learns by
# reconstruction alone (its objects' pixels weighted, as make agent's V); M is make
# agent's map M; C is linear and learns by CMA-ES from zero, once in the real room through
# V and M, once in M's dream and once in the pixel dream (04b's mover moving real frames,
# read by V, judged by M's heads), never chosen by the room in a dream (--keep last). Each
# C is tested alone and with the planner that plans in M's dream (no look-ahead heads).
# The same sizes as make agent, in its own folder; resumable step by step as make agent.
PAPER_DIR ?= data/paper
P := $(PAPER_DIR)/.paper
PAPER_C_GENERATIONS ?= 100
# Beyond the paper, from pixels and actions alone: 04b's pixel mover (splat, 5 epochs),
# and a third C trained from zero in the pixel dream (07 --dream --mover; 04b ~8 minutes,
# 60 generations 25 minutes beside other work: docs/experiments.md, eleventh session)
PAPER_MOVER_EPOCHS ?= 5
PAPER_PIXEL_GENERATIONS ?= 60
# The planner in the dream: 32 candidate plans of 10 steps, one CEM iteration (at make
# agent's sizes about 32 env-steps/s on 2 cores; docs/experiments.md)
PAPER_PLAN ?= --planner --plan-with return --candidates 32 --cem-iters 1
paper_step = $(call stamped,$(P),paper,$(1),$(2))
paper_resume = $(call resume_in,$(PAPER_DIR),$(1))

paper: $(P)/08.done
	@echo; echo "wall time per step (s):"; cat $(P)/times.txt
	@echo "results: $(PAPER_DIR)/results/test_controller.md (C from the real room), test_controller_dream.md (C from M's dream), test_controller_pixel.md (C from the pixel dream), *_8humans.md"

$(P)/01.done: | venv
	$(call paper_step,01,$(PY) 01_generate_vae_data.py --rollouts $(AGENT_ROLLOUTS) --testrollouts 30 --data-dir $(PAPER_DIR))
$(P)/02.done: $(P)/01.done
	$(call paper_step,02,$(PY) 02_generate_rnn_data.py --episodes $(AGENT_EPISODES) --testepisodes 50 --data-dir $(PAPER_DIR))
$(P)/03.done: $(P)/02.done
	$(call paper_step,03,$(PY) 03_train_vae.py --epochs $(AGENT_V_EPOCHS) --spatial $(AGENT_SPATIAL) --map-side $(AGENT_MAP_SIDE) --lr 1e-3 --object-weight 50 --goal-weight $(AGENT_GOAL_WEIGHT) --test-frames 1000 --data-dir $(PAPER_DIR) $(call paper_resume,vae_snapshot.npz))
$(P)/04.done: $(P)/03.done
	$(call paper_step,04,$(PY) 04_train_rnn.py --mode dream $(AGENT_M_FLAGS) --outcome-head --epochs $(AGENT_M_EPOCHS) --batch-size 32 --data-dir $(PAPER_DIR) $(call paper_resume,rnn_dream_snapshot.npz))
$(P)/04b.done: $(P)/04.done
	$(call paper_step,04b,$(PY) 04b_train_mover.py --motion splat --epochs $(PAPER_MOVER_EPOCHS) --data-dir $(PAPER_DIR) $(call paper_resume,mover_snapshot.npz))
$(P)/07.done: $(P)/04b.done
	$(call paper_step,07,$(PY) 07_train_controller.py --epochs $(PAPER_C_GENERATIONS) --popsize 32 --trials 16 --eval-every 10 --eval-episodes 200 --data-dir $(PAPER_DIR) $(call paper_resume,controller_es.npz))
$(P)/07dream.done: $(P)/07.done
	$(call paper_step,07dream,$(PY) 07_train_controller.py --dream --keep last --name controller_dream --epochs $(AGENT_DREAM_GENERATIONS) --popsize 32 --trials 8 --eval-every 10 --data-dir $(PAPER_DIR) $(call paper_resume,controller_dream_es.npz))
$(P)/07pixel.done: $(P)/07dream.done
	$(call paper_step,07pixel,$(PY) 07_train_controller.py --dream --mover --keep last --name controller_pixel --epochs $(PAPER_PIXEL_GENERATIONS) --popsize 32 --trials 8 --eval-every 10 --data-dir $(PAPER_DIR) $(call paper_resume,controller_pixel_es.npz))
$(P)/check.done: $(P)/07pixel.done
	$(call paper_step,check,$(PY) 02_generate_rnn_data.py --episodes 1 --testepisodes $(AGENT_CHECK_EPISODES) --seed 7 --data-dir $(PAPER_DIR)/heldout && \
		$(PY) diagnostics/check_world_model.py --held-out $(PAPER_DIR)/heldout --trained controller controller_dream controller_pixel --data-dir $(PAPER_DIR))
$(P)/08.done: $(P)/check.done
	$(call paper_step,08,$(PY) 08_test_controller.py $(PAPER_PLAN) --episodes $(AGENT_TEST_EPISODES) --data-dir $(PAPER_DIR) && \
		$(PY) 08_test_controller.py $(PAPER_PLAN) --episodes $(AGENT_TEST_EPISODES) --n-humans 8 --record 1 --out $(PAPER_DIR)/results/test_controller_8humans.json --data-dir $(PAPER_DIR) && \
		$(PY) 08_test_controller.py $(PAPER_PLAN) --episodes $(AGENT_TEST_EPISODES) --controller controller_dream --agent-only --record 1 --out $(PAPER_DIR)/results/test_controller_dream.json --data-dir $(PAPER_DIR) && \
		$(PY) 08_test_controller.py $(PAPER_PLAN) --episodes $(AGENT_TEST_EPISODES) --n-humans 8 --controller controller_dream --agent-only --record 1 --out $(PAPER_DIR)/results/test_controller_dream_8humans.json --data-dir $(PAPER_DIR) && \
		$(PY) 08_test_controller.py $(PAPER_PLAN) --episodes $(AGENT_TEST_EPISODES) --controller controller_pixel --agent-only --record 1 --out $(PAPER_DIR)/results/test_controller_pixel.json --data-dir $(PAPER_DIR) && \
		$(PY) 08_test_controller.py $(PAPER_PLAN) --episodes $(AGENT_TEST_EPISODES) --n-humans 8 --controller controller_pixel --agent-only --record 1 --out $(PAPER_DIR)/results/test_controller_pixel_8humans.json --data-dir $(PAPER_DIR))

# The README's and docs' results tables are the files `make agent` wrote: this copies
# them from $(AGENT_DIR)/results into docs/results/ and between each page's
# `<!-- results: NAME -->` markers (tools/sync_results.py; the tests check they match).
docs-results: venv
	$(PY) tools/sync_results.py --run-dir $(AGENT_DIR)

docs-results-paper: venv
	$(PY) tools/sync_results.py --run-dir $(PAPER_DIR) --prefix paper
