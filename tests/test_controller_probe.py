"""How far a linear C gets on each input (lib/diagnostics/controller_probe.py and
diagnostics/probe_controller.py): the state features, DAgger on any input, and the script."""

import json
import math
import os
import shutil

import numpy as np
import pytest
from cli_helpers import assert_refused, bad_flags, one_line_error, run, run_here

from lib.diagnostics import controller_probe as cp
from lib.diagnostics.probe import pool_pixels
from lib.env import socnavenv as sn
from lib.env.evaluation import evaluate, evaluation_seeds
from lib.env.policies import Policy

CONFIG = sn.EnvConfig(max_steps=25)


def test_state_features_in_the_robot_frame(make_sim):
    # Robot at the origin facing +y; goal 2 m ahead; one person 1 m to its right
    # walking forward (+y) at 1 m/s, one 3 m behind standing still.
    sim = make_sim(
        [0.0, 0.0, math.pi / 2],
        [0.0, 2.0],
        [[0.0, -3.0, 0.0, 0.0], [1.0, 0.0, math.pi / 2, 1.0]],
    )
    f = cp.state_features(sim, np.array([0]))[0]
    assert f.shape == (cp.input_size("state", 0, 0, 64, 2),)
    assert f[:4] == pytest.approx([1.0, 0.0, 0.5, 1.0], abs=1e-6)  # bearing, distance / 4
    w = math.exp(-1.0)  # the nearest first: 1 m away, on the right (y = -1), moving forward
    assert f[4:10] == pytest.approx([0.0, -w, w, w, 0.0, w], abs=1e-6)  # x vy - y vx = 1
    w2 = math.exp(-3.0)  # then the one behind (x = -3), standing still
    assert f[10:16] == pytest.approx([-3 * w2, 0.0, w2, 0.0, 0.0, 0.0], abs=1e-6)
    assert f[16:22] == pytest.approx([0.0] * 6)  # no third person
    # Walls 4 m away on every side (an 8 m room): equal gaps, no net push.
    assert f[22:26] == pytest.approx([math.exp(-4.0)] * 4, rel=1e-5)
    assert f[26:28] == pytest.approx([0.0, 0.0], abs=1e-7)


def test_state_features_angular_momentum_and_wall_push(make_sim):
    # Robot at (3, 0) facing +x (towards the wall at x = 4); a person 1 m ahead walking left.
    sim = make_sim([3.0, 0.0, 0.0], [0.0, 0.0], [[4.0, 0.0, math.pi / 2, 1.0]])
    f = cp.state_features(sim, np.array([0]))[0]
    w = math.exp(-1.0)
    assert f[4:10] == pytest.approx([w, 0.0, w, 0.0, w, w * (1.0 * 1.0 - 0.0)], abs=1e-6)
    # The near wall ahead pushes the robot back along its own x.
    assert f[26] == pytest.approx(math.exp(-7.0) - math.exp(-1.0), rel=1e-5)
    assert f[27] == pytest.approx(0.0, abs=1e-7)


class LinearTeacher(Policy):
    """A teacher that is exactly a linear C on one input: tanh(W x + b)."""

    def __init__(self, n, name, weights, biases):
        super().__init__(n)
        self.name, self.weights, self.biases = name, weights, biases
        self.needs_image = name == "pixels"

    def act(self, sim, images=None):
        all_slots = np.arange(self.n)
        x = pool_pixels(images) if self.name == "pixels" else cp.state_features(sim, all_slots)
        return np.tanh(x @ self.weights.T + self.biases).astype(np.float32)


def test_dagger_recovers_a_teacher_that_is_linear_in_the_input():
    size = cp.input_size("state", 0, 0, 64, 2)
    rng = np.random.default_rng(0)
    weights, biases = rng.normal(0, 0.1, (2, size)), np.array([0.3, -0.2])
    teacher = lambda n: LinearTeacher(n, "state", weights, biases)
    seen = []
    w, b = cp.imitate("state", None, None, teacher, CONFIG, 3, 2, 6, penalty=1e-12,
                      on_iteration=lambda k, s, steps: seen.append((k, steps)))  # fmt: skip
    assert [k for k, _ in seen] == [0, 1] and seen[1][1] > seen[0][1] > 0
    # On fresh episodes the fitted C acts as the teacher does, step for step.
    seeds = evaluation_seeds(9, 6)
    _, fitted = evaluate(cp.InputController(6, "state", None, None, w, b), seeds, CONFIG, 6)
    _, told = evaluate(teacher(6), seeds, CONFIG, 6)
    assert [(e.outcome, e.length) for e in fitted] == [(e.outcome, e.length) for e in told]
    for e, f in zip(fitted, told):
        np.testing.assert_allclose(e.action, f.action, atol=1e-4)


def test_the_pixels_input_is_the_pooled_frame(make_sim):
    images = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    c = cp.InputController(3, "pixels", None, None, np.zeros((2, 768)), np.zeros(2), pool=4)
    np.testing.assert_array_equal(
        c.features(None, images, np.array([0, 2]), None), pool_pixels(images[[0, 2]], 4)
    )


def test_the_controller_plays_its_weights_and_checks_its_input():
    with pytest.raises(ValueError, match="unknown input"):
        cp.input_size("h", 8, 16, 64, 2)
    with pytest.raises(ValueError, match="zh needs M"):
        cp.InputController(2, "zh", None, None, np.zeros((2, 24)), np.zeros(2))
    assert cp.input_size("zh", 8, 16, 64, 2) == 24 and cp.input_size("pixels", 8, 16, 64, 4) == 768
    # A constant C (zero weights, bias b) plays tanh(b) on every live slot.
    sim = sn.SocNavSim(3, CONFIG)
    sim.reset_seeds([1, 2, 3])
    c = cp.InputController(3, "state", None, None, np.zeros((2, 28)), np.array([0.5, -1.0]))
    a = c.act(sim, None)
    np.testing.assert_allclose(a, np.tile(np.tanh([0.5, -1.0]), (3, 1)), rtol=1e-6)


def test_the_script_fits_every_input_on_tiny_models(tiny_models, tmp_path):
    out = tmp_path / "pc.json"
    run("diagnostics/probe_controller.py", "--iterations", 2, "--episodes", 3, "--test-episodes", 4,
        "--pool", 4, "--out", out, "--data-dir", tiny_models)  # fmt: skip
    with open(out) as f:
        report = json.load(f)
    rows = report["results"]
    assert set(rows) == set(cp.INPUTS) and report["args"]["inputs"] == list(cp.INPUTS)
    assert [rows[k]["size"] for k in cp.INPUTS] == [8, 8 + 16, 3 * 16 * 16, 28]
    for row in rows.values():
        assert row["test"]["episodes"] == 4
        assert [d["driver"] for d in row["dagger"]] == ["teacher", "C"]
        rates = sum(
            row["test"][f"{r}_rate"] for r in ("success", "collision", "out_of_map", "timeout")
        )
        assert rates == pytest.approx(1.0)
    # The teacher drove iteration 0, so its rates are the oracle's on those episodes.
    assert rows["state"]["dagger"][0] == rows["pixels"]["dagger"][0] | {
        "steps": rows["state"]["dagger"][0]["steps"]
    }
    assert os.path.getsize(str(out)[:-5] + ".png") > 10_000
    with open(str(out)[:-5] + ".md") as f:
        assert f.read().startswith("| linear C on (DAgger onto oracle) |")


def test_the_script_needs_models_only_for_z_and_zh(tmp_path):
    err = one_line_error(run_here("diagnostics/probe_controller.py", "--data-dir", tmp_path))
    assert "vae" in err and "pixels and state need no models" in err
    run("diagnostics/probe_controller.py", "--inputs", "state", "--iterations", 1, "--episodes", 2,
        "--test-episodes", 2, "--data-dir", tmp_path)  # fmt: skip
    with open(tmp_path / "results" / "probe_controller.json") as f:
        assert list(json.load(f)["results"]) == ["state"]


def test_the_script_refuses_bad_flags_and_writes_nothing(tmp_path, tiny_models):
    d = tmp_path / "data"
    shutil.copytree(os.path.join(tiny_models, "models"), d / "models")
    for flags, word in bad_flags("diagnostics/probe_controller.py"):
        assert_refused("diagnostics/probe_controller.py", flags, word, d)
    os.remove(d / "models" / "rnn_dream.npz")
    err = one_line_error(
        run_here("diagnostics/probe_controller.py", "--inputs", "zh", "--data-dir", d)
    )
    assert "rnn_dream" in err
    assert not os.path.exists(d / "results" / "probe_controller.json")
