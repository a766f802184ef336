"""The linear probe (lib/diagnostics/probe.py and diagnostics/probe_features.py): scores, the true
quantities it reads from the simulator, and the script on tiny models."""

import json
import math
import os
import shutil

import numpy as np
import pytest
from cli_helpers import one_line_error, run, run_here

from lib.diagnostics import probe


def test_r2_is_one_for_a_perfect_fit_and_zero_for_the_mean():
    y = np.array([1.0, 2.0, 4.0, 7.0])
    assert probe.r2_score(y, y) == 1.0
    assert probe.r2_score(y, np.full(4, y.mean())) == 0.0
    assert probe.r2_score(y, y + 1.0) == pytest.approx(1 - 4 / np.sum((y - y.mean()) ** 2))
    with pytest.raises(probe.ProbeError, match="constant"):
        probe.r2_score(np.ones(3), np.zeros(3))


def test_auc_counts_ordered_pairs_and_ties_half():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    assert probe.auc(scores, labels) == 0.75  # 3 of the 4 (positive, negative) pairs
    assert probe.auc(np.ones(4), labels) == 0.5
    assert probe.auc(-scores, labels) == 0.25
    with pytest.raises(probe.ProbeError, match="both classes"):
        probe.auc(scores, np.zeros(4))


def test_a_target_linear_in_the_features_scores_one_and_noise_scores_about_zero():
    rng = np.random.default_rng(0)
    n, d = 3000, 12
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10.0, d)  # unequal scales
    w = rng.normal(size=d)
    episodes = np.repeat(np.arange(30), n // 30)
    targets = {"goal_sin": x @ w + 3.0, "goal_distance": rng.normal(size=n)}
    out = probe.fit_and_score(x, targets, episodes)
    assert out["goal_sin"]["score"] > 0.9999
    assert abs(out["goal_distance"]["score"]) < 0.02
    assert out["goal_sin"]["rows"] == 900  # the last 9 of 30 episodes
    assert out["goal_sin"]["lambda"] in probe.LAMBDAS


@pytest.mark.parametrize("rows", [40, 400])  # fewer rows than features: the dual form
def test_ridge_weights_solve_the_penalised_normal_equations(rows):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(rows, 120)) * rng.uniform(0.5, 3.0, 120) + 2.0
    y = rng.normal(size=(rows, 2))
    ridge = probe.Ridge(x, y)
    assert ridge.dual == (rows < 120)
    xs = (x - x.mean(0)) / x.std(0)
    for lam in (0.1, 10.0):
        w = np.linalg.solve(xs.T @ xs + lam * np.eye(120), xs.T @ (y - y.mean(0)))
        np.testing.assert_allclose(ridge.weights(lam), w, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(ridge.predict(x[:5], lam), xs[:5] @ w + y.mean(0), rtol=1e-7)


def test_person_quantities_are_fitted_and_scored_where_a_person_is_near():
    rng = np.random.default_rng(1)
    n = 2000
    x = rng.normal(size=(n, 3))
    mask = rng.random(n) < 0.3
    # Linear where a person is near; garbage elsewhere (where it must be ignored).
    y = np.where(mask, x[:, 0] - 2 * x[:, 1], rng.normal(size=n) * 100)
    episodes = np.repeat(np.arange(20), n // 20)
    out = probe.fit_and_score(x, {"person_x": y, "person_mask": mask}, episodes)
    assert out["person_x"]["score"] > 0.9999
    assert out["person_x"]["rows"] == int(mask[episodes >= 14].sum())


def test_collision_soon_is_scored_by_auc():
    rng = np.random.default_rng(2)
    n = 1000
    x = rng.normal(size=(n, 2))
    soon = x[:, 0] > 1.0  # separable by the first feature
    episodes = np.repeat(np.arange(10), n // 10)
    out = probe.fit_and_score(x, {"collision_soon": soon}, episodes)
    assert out["collision_soon"]["score"] > 0.95


def test_episodes_split_into_fit_validation_and_test():
    episodes = np.repeat(np.arange(10), 3)
    fit, val, test = probe.split_episodes(episodes)
    assert set(episodes[test]) == {7, 8, 9}
    assert set(episodes[val]) == {6}
    assert set(episodes[fit]) == {0, 1, 2, 3, 4, 5}
    with pytest.raises(probe.ProbeError, match="at least 3 episodes"):
        probe.split_episodes(np.array([0, 1]))


def test_task_quantities_in_the_robot_frame(make_sim):
    # Robot at the origin facing +x; goal 2 m to its left; a person 1 m ahead walking
    # at 1 m/s towards +y (the robot's left).
    sim = make_sim([0.0, 0.0, 0.0], [0.0, 2.0], [[1.0, 0.0, math.pi / 2, 1.0]])
    q = probe.task_quantities(sim, np.array([0]))
    assert q["goal_sin"][0] == pytest.approx(1.0)
    assert q["goal_cos"][0] == pytest.approx(0.0, abs=1e-12)
    assert q["goal_distance"][0] == pytest.approx(2.0)
    assert q["wall_distance"][0] == pytest.approx(4.0)  # 8 m room
    assert q["person_mask"][0]
    assert [q[k][0] for k in ("person_x", "person_y", "person_vx", "person_vy")] == pytest.approx(
        [1.0, 0.0, 0.0, 1.0], abs=1e-12
    )
    # Turned to face +y: the goal is ahead, the person on the right walking forward.
    sim.robot[0] = [1.0, -3.0, math.pi / 2]
    sim.goal[0] = [1.0, -1.0]
    sim.humans[0] = [2.0, -3.0, math.pi / 2, 1.0]
    q = probe.task_quantities(sim, np.array([0]))
    assert (q["goal_sin"][0], q["goal_cos"][0]) == pytest.approx((0.0, 1.0), abs=1e-12)
    assert q["wall_distance"][0] == pytest.approx(1.0)  # 1 m from the wall at y = -4
    assert [q[k][0] for k in ("person_x", "person_y", "person_vx", "person_vy")] == pytest.approx(
        [0.0, -1.0, 1.0, 0.0], abs=1e-12
    )


def test_a_person_out_of_range_is_not_near(make_sim):
    sim = make_sim([0.0, 0.0, 0.0], [0.0, 2.0], [[probe.PERSON_RANGE + 0.1, 0.0, 0.0, 1.0]])
    q = probe.task_quantities(sim, np.array([0]))
    assert not q["person_mask"][0] and q["person_x"][0] == 0.0


def test_collision_soon_marks_the_last_horizon_steps_of_a_collision():
    assert probe.collision_soon(12, "collision").tolist() == [False] * 2 + [True] * 10
    assert not probe.collision_soon(12, "success").any()
    assert probe.collision_soon(3, "collision").all()


def test_pixels_are_pooled_in_blocks():
    images = np.zeros((1, 4, 4, 3), np.uint8)
    images[0, :2, :2] = 255
    out = probe.pool_pixels(images).reshape(2, 2, 3)
    assert out[0, 0].tolist() == [1.0, 1.0, 1.0] and out[1, 1].tolist() == [0.0, 0.0, 0.0]


@pytest.fixture
def models(tiny_models):
    return tiny_models


def test_the_script_probes_z_and_z_h_against_the_vector_observation(models):
    out = os.path.join(models, "results", "probe.json")
    run("diagnostics/probe_features.py", "--episodes", 6, "--n-envs", 3, "--random-features", 16,
        "--pixels", "--data-dir", models)  # fmt: skip
    with open(out) as f:
        rows = json.load(f)["results"]
    assert set(rows) == {"vector (reference)", "z", "[z, h]", "z, 16 random ReLU", "pixels 32x32"}
    for row in rows.values():
        assert set(row) == set(probe.QUANTITIES)
    # Every feature set is scored on the same held-out steps (features and targets
    # aligned step for step): the same row counts, quantity by quantity; the person
    # quantities on the steps with a person near, a subset.
    for q in probe.QUANTITIES:
        assert len({row[q]["rows"] for row in rows.values()}) == 1, q
    scored = rows["z"]["goal_distance"]["rows"]
    assert scored > 0 and rows["z"]["person_x"]["rows"] <= scored
    assert os.path.getsize(out[:-5] + ".png") > 10_000
    with open(out[:-5] + ".md") as f:
        assert f.read().startswith("| features |")


def test_the_script_probes_v_alone_without_m(tmp_path, models):
    d = tmp_path / "data"
    shutil.copytree(os.path.join(models, "models"), d / "models")
    os.remove(d / "models" / "rnn_dream.npz")
    err = one_line_error(
        run_here("diagnostics/probe_features.py", "--episodes", 4, "--data-dir", d)
    )
    assert "rnn_dream" in err and "--no-rnn" in err
    run(
        "diagnostics/probe_features.py", "--episodes", 4, "--n-envs", 2, "--no-rnn", "--data-dir", d
    )
    with open(d / "results" / "probe.json") as f:
        assert set(json.load(f)["results"]) == {"vector (reference)", "z"}


def test_the_script_needs_v(tmp_path):
    err = one_line_error(run_here("diagnostics/probe_features.py", "--data-dir", tmp_path))
    assert "vae" in err and "03_train_vae.py" in err
    err = one_line_error(run_here("diagnostics/probe_features.py", "--episodes", "0"))
    assert "--episodes" in err
