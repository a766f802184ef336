"""Shared fixtures: the repository on sys.path, hand-placed simulator states,
and a runner for the numbered scripts."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# `lib` first: its thread settings must precede NumPy, its Chainer shims (lib/compat.py)
# must precede Chainer, and test modules import both.
import lib  # noqa: F401, I001

import numpy as np
import pytest
from cli_helpers import make_tiny_models

from lib.env import socnavenv as sn


def place(robot, goal, humans=(), max_steps=sn.MAX_STEPS, steps=0) -> sn.SocNavSim:
    """A one-slot SocNavSim in a hand-made state.

    Args:
        robot: [x, y, heading] (m, m, rad).
        goal: [x, y] (m).
        humans: sequence of [x, y, heading, speed] (m, m, rad, m/s).
        max_steps: the episode's step limit.
        steps: steps already taken.
    """
    humans = np.asarray(humans, np.float64).reshape(-1, 4)
    sim = sn.SocNavSim(1, sn.EnvConfig(n_humans=len(humans), max_steps=max_steps))
    sim.robot[0] = robot
    sim.goal[0] = goal
    sim.humans[0] = humans
    sim.steps[0] = steps
    sim.active[0] = True
    return sim


@pytest.fixture
def make_sim():
    """Factory for one-slot simulators in a hand-placed state (see `place`)."""
    return place


def run_script(*args, timeout=120) -> subprocess.CompletedProcess:
    """Runs `python <args>` in the repository root and captures its output."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def script():
    """Runs a numbered script: `script("01_generate_vae_data.py", "--help")`."""
    return run_script


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny data and models (`cli_helpers.make_tiny_models`) shared by the diagnostics'
    tests, which only add their own files under results/."""
    return make_tiny_models(tmp_path_factory.mktemp("tiny"))


# The files that run the scripts end to end take the longest (`--durations=0`, two
# workers: 70-140 s each). `make test` gives each worker whole files in collection order
# (pytest-xdist's loadfile), so these go first and the workers end together instead of
# one finishing a long file alone.
LONGEST_FIRST = (
    "test_interrupts_controllers.py",
    "test_controller.py",
    "test_vae_scripts.py",
    "test_lookahead.py",
    "test_interrupts_and_ray.py",
    "test_rnn_scripts.py",
    "test_map_rnn.py",
    "test_pipeline.py",
    "test_data_scripts.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within
