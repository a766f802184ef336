"""C's start by imitation (lib/control/imitation.py) and 07's --imitate."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_helpers import ROOT, one_line_error, run_here
from test_controller import copy_data, log_rows, train_c

from lib.control.agent import WorldModelsAgent
from lib.control.imitation import ACTION_CLIP, LinearFit, TeacherLabels, dagger
from lib.env import socnavenv as sn
from lib.env.evaluation import evaluate, evaluation_seeds
from lib.env.policies import make_policy
from lib.models import saved_models
from lib.models.controller import n_params, unflatten
from lib.seeding import derive_seeds

CONFIG = sn.EnvConfig(max_steps=30)


@pytest.fixture(scope="module")
def models(tiny_models):
    """The session's tiny V and M, read-only (tests that write copy them first)."""
    return tiny_models


@pytest.fixture(scope="module")
def v_and_m(models):
    vae, _ = saved_models.load_vae(str(models))
    rnn, _ = saved_models.load_rnn(str(models), "dream", vae.z_size)
    return vae, rnn


def test_linear_fit_recovers_an_exactly_linear_teacher():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6))
    w = rng.normal(0, 0.1, (2, 6))
    b = np.array([0.2, -0.1])
    actions = np.tanh(x @ w.T + b)
    assert np.abs(actions).max() < ACTION_CLIP  # none clipped: the fit must be exact
    fit = LinearFit(6)
    fit.add(x, actions)
    got = fit.solve(penalty=0.0)
    np.testing.assert_allclose(got[:12].reshape(2, 6), w, atol=1e-5)
    np.testing.assert_allclose(got[12:], b, atol=1e-5)


def test_linear_fit_in_chunks_equals_one_batch_and_clips_saturated_actions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4))
    a = np.clip(rng.normal(0, 2, (300, 2)), -1, 1)  # many exactly ±1
    one, chunks = LinearFit(4), LinearFit(4)
    one.add(x, a)
    for i in range(0, 300, 70):
        chunks.add(x[i : i + 70], a[i : i + 70])
    np.testing.assert_allclose(one.solve(), chunks.solve(), rtol=1e-9, atol=1e-9)
    assert np.isfinite(one.solve()).all()
    # Saturated labels are fitted as ±atanh(ACTION_CLIP): a constant +1 teacher gives that bias.
    const = LinearFit(4)
    const.add(x, np.ones((300, 2)))
    np.testing.assert_allclose(const.solve()[-2:], np.arctanh(ACTION_CLIP), rtol=1e-6)
    np.testing.assert_allclose(const.solve()[:-2], 0.0, atol=1e-9)
    with pytest.raises(ValueError, match="no steps"):
        LinearFit(4).solve()


def test_teacher_labels_play_the_teacher_or_c_as_told(v_and_m):
    vae, rnn = v_and_m
    seeds = evaluation_seeds(3, 4)
    params = np.random.default_rng(2).normal(0, 0.3, n_params(8, 16)).astype(np.float32)
    # beta 1 plays the teacher: the same episodes as the teacher alone.
    fit = LinearFit(8 + 16)
    teacher = TeacherLabels(4, vae, rnn, params[None], make_policy("greedy", 4), 1.0, fit)
    taught, episodes = evaluate(teacher, seeds, CONFIG, 4)
    alone, _ = evaluate(make_policy("greedy", 4), seeds, CONFIG, 4)
    assert taught == alone
    assert fit.count == sum(e.length for e in episodes)  # one labelled row per step
    # beta 0 plays C: the same episodes as the World Models agent with these parameters.
    learner = TeacherLabels(4, vae, rnn, params[None], make_policy("greedy", 4), 0.0, LinearFit(24))
    played, _ = evaluate(learner, seeds, CONFIG, 4)
    agent, _ = evaluate(WorldModelsAgent(4, vae, rnn, params[None]), seeds, CONFIG, 4)
    assert played == agent


def test_dagger_recovers_a_teacher_that_is_itself_a_linear_c(v_and_m):
    """A teacher that is a linear C on the same [z, h] is recovered exactly by one
    teacher-driven iteration (its M reads the same actions as the learner's)."""
    vae, rnn = v_and_m
    true = np.random.default_rng(4).normal(0, 0.15, n_params(8, 16)).astype(np.float32)
    got, history = dagger(
        vae, rnn, lambda n: WorldModelsAgent(n, vae, rnn, true[None]), CONFIG, seed=0,
        iterations=1, episodes=6, penalty=1e-9,
    )  # fmt: skip
    w, b = unflatten(got, 8, 16)
    tw, tb = unflatten(true, 8, 16)
    np.testing.assert_allclose(w, tw, atol=2e-3)
    np.testing.assert_allclose(b, tb, atol=2e-3)
    assert [h.driver for h in history] == ["teacher"] and history[0].episodes == 6


def test_dagger_iterations_record_their_drivers_and_grow(v_and_m):
    vae, rnn = v_and_m
    seen = []
    params, history = dagger(vae, rnn, "greedy_avoid", CONFIG, 0, 3, 5, on_episode=seen.append)
    assert params.shape == (n_params(8, 16),) and params.dtype == np.float32
    assert [h.driver for h in history] == ["teacher", "C", "C"]
    assert len(seen) == 15
    steps = [h.steps for h in history]
    assert steps == sorted(steps) and len(set(steps)) == 3
    # Iteration 0 is the teacher on its own episodes.
    seeds = derive_seeds(0, "imitation-0", 5)
    alone, episodes = evaluate(make_policy("greedy_avoid", 5), seeds, CONFIG, 5)
    assert history[0].success_rate == alone["success_rate"]
    assert history[0].steps == sum(e.length for e in episodes)
    with pytest.raises(ValueError, match="unknown teacher"):
        dagger(vae, rnn, "nobody", CONFIG, 0, 1, 1)


# ---------------------------------------------------------------------------
# 07 --imitate.
# ---------------------------------------------------------------------------
def test_07_imitate_starts_cma_from_the_imitated_c(models, tmp_path):
    d = copy_data(models, tmp_path)
    proc = train_c(d, "--epochs", 2, "--workers", 1, "--imitate", "greedy_avoid",
                   "--imitate-iterations", 2, "--imitate-episodes", 3)  # fmt: skip
    assert "imitation 2/2: C drove 3 episodes" in proc.stdout
    assert "generation 0 (imitated C)" in proc.stdout
    report = json.loads((d / "models" / "controller_imitation.json").read_text())
    assert report["teacher"] == "greedy_avoid"
    assert [r["driver"] for r in report["iterations"]] == ["teacher", "C"]
    rows = log_rows(d)
    assert [r["generation"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["eval_success"] != "" and rows[0]["best"] == ""
    es = np.load(d / "models" / "controller_es.npz")
    assert len(es["history"]) == 2 and np.abs(es["x0"]).max() > 0  # CMA-ES began at C
    side = json.loads((d / "models" / "controller.json").read_text())
    assert side["generation"] in (0, 2)
    if side["generation"] == 0:  # the imitated C is the kept one: it is x0 itself
        c = np.load(d / "models" / "controller.npz")
        np.testing.assert_array_equal(
            np.concatenate([c["W"].ravel(), c["b"]]), es["x0"].astype(np.float32)
        )
    # A resumed run continues CMA-ES and does not imitate again.
    proc = train_c(d, "--epochs", 3, "--workers", 1, "--resume")
    assert "imitating" not in proc.stdout
    assert [r["generation"] for r in log_rows(d)] == ["0", "1", "2", "3"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--imitate-episodes", "4"], "needs --imitate"),
        (["--imitate-iterations", "2"], "needs --imitate"),
        (["--imitate", "oracle", "--dream"], "--dream"),
        (["--imitate", "nobody"], "invalid choice"),
        (["--imitate", "oracle", "--imitate-episodes", "0"], "--imitate-episodes"),
    ],
)
def test_07_refuses_bad_imitation_flags(models, tmp_path, args, words):
    d = copy_data(models, tmp_path)
    proc = run_here("07_train_controller.py", "--epochs", 1, "--data-dir", d, *args)
    assert words in one_line_error(proc)
    assert not (d / "models" / "controller_es.npz").exists()


def test_07_ctrl_c_during_imitation_is_one_line_and_writes_no_run(models, tmp_path):
    d = copy_data(models, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "07_train_controller.py"), "--imitate", "oracle",
         "--imitate-iterations", "50", "--imitate-episodes", "50", "--max-steps", "40",
         "--workers", "1", "--data-dir", str(d)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # As at a terminal: a shell's background job (nohup, CI) inherits SIGINT ignored,
        # and Python then never turns it into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
        start_new_session=True,  # its own process group, which Ctrl-C signals as a whole
    )  # fmt: skip
    for line in proc.stdout:  # wait until the imitation has begun
        if line.startswith("imitating oracle"):
            break
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C at a terminal: 07 and any worker it has
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    assert "interrupted during imitation" in line
    assert not (d / "models" / "controller_es.npz").exists()
