"""C: the controller, the CMA-ES driver, the fitness workers, 07 and 08."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from cli_helpers import assert_events_match_log, assert_same_arrays, one_line_error, run, run_here
from PIL import Image

from lib.control import fitness
from lib.control.agent import WorldModelsAgent, dream_rollouts
from lib.control.es import CMAES, ReplayMismatch
from lib.env import socnavenv as sn
from lib.env.evaluation import evaluate, evaluation_seeds
from lib.models import saved_models
from lib.models.controller import Controller, act_batch, n_params, unflatten
from lib.seeding import derive_seed


@pytest.fixture(scope="module")
def models(tiny_models):
    """Tiny V (z 8) and M (hidden 16, with reward/done heads) on tiny data: the
    session's, read-only (tests that write copy it first)."""
    return tiny_models


def copy_data(src, tmp_path):
    dst = tmp_path / "d"
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------
# Controller and CMA-ES driver.
# ---------------------------------------------------------------------------
def test_controller_sizes_and_flat_round_trip():
    c = Controller()
    assert c.size == n_params(32, 256) == 578
    flat = np.random.default_rng(0).normal(size=578).astype(np.float32)
    c.set_flat(flat)
    np.testing.assert_array_equal(c.get_flat(), flat)
    z = np.random.default_rng(1).normal(size=(3, 32)).astype(np.float32)
    h = np.random.default_rng(2).normal(size=(3, 256)).astype(np.float32)
    expected = np.tanh(np.concatenate([z, h], 1) @ flat[:576].reshape(2, 288).T + flat[576:])
    np.testing.assert_allclose(c(z, h).array, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        c.set_flat(flat[:10])


def test_act_batch_uses_each_agents_candidate():
    rng = np.random.default_rng(0)
    params = rng.normal(size=(3, n_params(4, 6))).astype(np.float32)
    w, b = unflatten(params, 4, 6)
    z = rng.normal(size=(5, 4)).astype(np.float32)
    h = rng.normal(size=(5, 6)).astype(np.float32)
    which = np.array([2, 0, 1, 2, 0])
    out = act_batch(w, b, which, z, h)
    for i, k in enumerate(which):
        c = Controller(4, 6)
        c.set_flat(params[k])
        np.testing.assert_allclose(out[i], c(z[i : i + 1], h[i : i + 1]).array[0], rtol=1e-5)


def test_cma_solves_a_quadratic_through_the_driver():
    target = np.linspace(-1, 1, 8)
    es = CMAES(8, popsize=16, sigma=0.5, seed=7)
    while es.generation < 80:
        xs = es.ask()
        es.tell(xs, -((xs - target) ** 2).sum(axis=1))  # returns: higher is better
    np.testing.assert_allclose(es.mean, target, atol=1e-2)
    best, ret = es.best()
    assert ret > -1e-3 and np.abs(best - target).max() < 0.05


def test_diagonal_cma_adapts_a_badly_scaled_quadratic_faster_and_replays():
    # Scales from 1 to 1000: a diagonal covariance is all this needs, and the diagonal
    # search learns it far sooner than the full one (110 against 3194 after 120 generations).
    scale = np.geomspace(1.0, 1000.0, 30)
    loss = {}
    for diagonal in (True, False):
        es = CMAES(30, popsize=16, sigma=0.5, seed=5, diagonal=diagonal)
        while es.generation < 120:
            xs = es.ask()
            es.tell(xs, -(((xs - 0.3) * scale) ** 2).sum(axis=1))
        loss[diagonal] = (((es.mean - 0.3) * scale) ** 2).sum()
    assert loss[True] < loss[False] / 10
    es = CMAES(30, popsize=16, sigma=0.5, seed=5, diagonal=True)
    assert es.es.opts["CMA_diagonal"] is True
    for _ in range(3):
        xs = es.ask()
        es.tell(xs, -(((xs - 0.3) * scale) ** 2).sum(axis=1))
    arrays = es.state_arrays()
    assert bool(arrays["diagonal"])
    np.testing.assert_array_equal(CMAES.replay(arrays).ask(), es.ask())


def test_cma_replay_is_exact_and_guarded():
    es = CMAES(5, popsize=8, sigma=0.3, seed=3)
    for _ in range(4):
        xs = es.ask()
        es.tell(xs, -np.abs(xs).sum(1))
    arrays = es.state_arrays()
    again = CMAES.replay(arrays)
    np.testing.assert_array_equal(again.mean, es.mean)
    np.testing.assert_array_equal(again.ask(), es.ask())
    arrays["checksums"] = arrays["checksums"] + 1.0
    with pytest.raises(ReplayMismatch):
        CMAES.replay(arrays)


def test_cma_starts_at_x0_and_replays_from_the_saved_x0(tmp_path):
    x0 = np.linspace(-1, 1, 5)
    es = CMAES(5, popsize=8, sigma=0.01, seed=3, x0=x0)
    np.testing.assert_allclose(es.ask().mean(0), x0, atol=0.05)  # samples around x0
    es = CMAES(5, popsize=8, sigma=0.01, seed=3, x0=x0)
    for _ in range(3):
        xs = es.ask()
        es.tell(xs, -np.abs(xs).sum(1))
    es.save(str(tmp_path / "es.npz"))
    arrays, _ = CMAES.load_state(str(tmp_path / "es.npz"))
    np.testing.assert_array_equal(arrays["x0"], x0)
    np.testing.assert_array_equal(CMAES.replay(arrays).ask(), es.ask())
    with pytest.raises(ValueError, match="x0 has shape"):
        CMAES(5, x0=np.zeros(4))


def test_cma_state_file_round_trip_by_named_fields(tmp_path):
    es = CMAES(5, popsize=6, sigma=0.2, seed=4)
    for _ in range(3):
        xs = es.ask()
        es.tell(xs, -np.abs(xs).sum(1))
    es.save(str(tmp_path / "es.npz"), {"best_eval": 1.5})
    arrays, record = CMAES.load_state(str(tmp_path / "es.npz"))
    assert record == {"best_eval": 1.5}
    assert (int(arrays["n_params"]), int(arrays["popsize"])) == (5, 6)
    assert (float(arrays["sigma"]), int(arrays["seed"])) == (0.2, 4)
    np.testing.assert_array_equal(CMAES.replay(arrays).ask(), es.ask())
    # a file from before the fields were named: one `settings` array
    old = es.state_arrays()
    old = {
        "settings": np.array([old.pop(k) for k in ("n_params", "popsize", "sigma", "seed")]),
        **{k: v for k, v in old.items() if k != "diagonal"},  # it came later
        "record": np.array('{"best_eval": 2.0}'),
    }
    np.savez(tmp_path / "old.npz", **old)
    arrays, record = CMAES.load_state(str(tmp_path / "old.npz"))
    assert record == {"best_eval": 2.0}
    np.testing.assert_array_equal(CMAES.replay(arrays).mean, es.mean)
    np.savez(tmp_path / "bad.npz", history=np.zeros((1, 6)))
    with pytest.raises(KeyError, match="n_params"):
        CMAES.load_state(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError):
        CMAES(5, seed=0)


def test_cma_keeps_numpy_global_rng_untouched():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    es = CMAES(4, popsize=6, sigma=0.2, seed=9)
    es.tell(es.ask(), np.zeros(6))
    assert np.random.rand() == expected


def test_cma_arithmetic_runs_on_one_blas_thread_whatever_the_callers():
    """Replay needs pycma's products summed in one order: ask and tell run on one BLAS
    thread even where the caller allows two (--threads auto changes that with load)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    es = CMAES(40, popsize=8, sigma=0.2, seed=3)
    seen = []

    def spy(fn):
        def wrapped(*args, **kwargs):
            seen.append({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
            return fn(*args, **kwargs)

        return wrapped

    es.es.ask, es.es.tell = spy(es.es.ask), spy(es.es.tell)
    with threadpool_limits(limits=2, user_api="blas"):
        outside = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
        es.tell(es.ask(), np.zeros(8))
    assert len(seen) == 2 and all(s == {1} for s in seen), seen
    assert outside == {2} or os.cpu_count() == 1  # the limit around the calls was real


# ---------------------------------------------------------------------------
# Agents and fitness.
# ---------------------------------------------------------------------------
def test_lockstep_equals_one_at_a_time(models):
    vae, _ = saved_models.load_vae(str(models))
    rnn, _ = saved_models.load_rnn(str(models), "dream", 8)
    params = np.random.default_rng(0).normal(0, 0.5, (1, n_params(8, 16))).astype(np.float32)
    seeds = evaluation_seeds(5, 6)
    config = sn.EnvConfig(max_steps=60)
    _, together = evaluate(WorldModelsAgent(6, vae, rnn, params), seeds, config, n_envs=6)
    alone = []
    for s in seeds:
        _, eps = evaluate(WorldModelsAgent(1, vae, rnn, params), [s], config, n_envs=1)
        alone.append(eps[0])
    np.testing.assert_allclose(
        [e.ret for e in together], [e.ret for e in alone], rtol=1e-5, atol=1e-6
    )
    assert [e.outcome for e in together] == [e.outcome for e in alone]
    assert [e.length for e in together] == [e.length for e in alone]


def test_dream_rollouts_need_heads_and_count_steps(models):
    rnn, _ = saved_models.load_rnn(str(models), "dream", 8)
    params = np.zeros((2, n_params(8, 16)), np.float32)
    z0 = np.zeros((4, 8), np.float32)
    returns, lengths = dream_rollouts(
        rnn, params, np.array([0, 0, 1, 1]), z0, 1.0, np.random.default_rng(0), max_steps=20
    )
    assert returns.shape == (4,) and np.all((lengths >= 1) & (lengths <= 20))
    assert np.all(np.isfinite(returns))
    from lib.models.mdn_rnn import MDNRNN

    with pytest.raises(ValueError, match="reward and done heads"):
        dream_rollouts(
            MDNRNN(z_size=8, hidden_size=16),
            params,
            np.zeros(4, int),
            z0,
            1.0,
            np.random.default_rng(0),
        )


@pytest.mark.parametrize("dream", [False, True])
def test_fitness_independent_of_workers(models, tmp_path, dream):
    starts = None
    if dream:
        starts = str(tmp_path / "starts.npz")
        np.savez(starts, mu=np.zeros((3, 8), np.float32), logvar=np.zeros((3, 8), np.float32))
    spec = fitness.Spec(str(models), "dream", 2, 11, dream, 1.0, {"max_steps": 30}, starts)
    params = np.random.default_rng(3).normal(0, 0.3, (6, n_params(8, 16))).astype(np.float32)
    env_before = dict(os.environ)
    with fitness.Evaluator(spec, workers=1, group_size=2) as one:
        r1, l1 = one(params, 0)
    with fitness.Evaluator(spec, workers=2, group_size=2) as two:
        r2, l2 = two(params, 0)
        assert two.pool is not None
    assert two.pool is None  # closed on leaving the block
    assert dict(os.environ) == env_before  # workers limit their own threads, not the parent's
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(l1, l2)
    assert r1.shape == (6, 2)


def die_on_second_group(task):
    """A task function whose worker dies on candidates 2-3 (for the test below)."""
    if task["first"] == 2:
        os._exit(3)
    return fitness.evaluate_group(task)


def test_dying_worker_raises_with_its_candidates(models):
    spec = fitness.Spec(str(models), "dream", 1, 0, False, 1.0, {"max_steps": 10})
    params = np.zeros((4, n_params(8, 16)), np.float32)
    with (
        fitness.Evaluator(spec, workers=2, group_size=2, task_fn=die_on_second_group) as ev,
        pytest.raises(fitness.WorkerDied, match="candidates 2-3 of generation 1"),
    ):
        ev(params, 0)


def test_ray_backend_matches_local(models):
    pytest.importorskip("ray")
    spec = fitness.Spec(str(models), "dream", 2, 4, False, 1.0, {"max_steps": 20})
    params = np.random.default_rng(5).normal(0, 0.3, (4, n_params(8, 16))).astype(np.float32)
    local = fitness.Evaluator(spec, workers=1, group_size=2)(params, 1)
    ray_eval = fitness.Evaluator(spec, workers=2, backend="ray", group_size=2)
    try:
        remote = ray_eval(params, 1)
    finally:
        ray_eval.close()
        import ray

        ray.shutdown()
    np.testing.assert_array_equal(local[0], remote[0])
    np.testing.assert_array_equal(local[1], remote[1])


# ---------------------------------------------------------------------------
# Scripts.
# ---------------------------------------------------------------------------
def train_c(d, *extra, check=True):
    """07 at tiny sizes; with check=False (a refusal expected) in this process."""
    args = ("--popsize", 6, "--trials", 2, "--eval-every", 2, "--eval-episodes", 4,
            "--max-steps", 40, "--group-size", 3, "--data-dir", d, *extra)  # fmt: skip
    return (
        run("07_train_controller.py", *args) if check else run_here("07_train_controller.py", *args)
    )


def log_rows(d):
    with open(d / "models" / "controller_log.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained_c(models, tmp_path_factory):
    """The tiny models with C trained by 07 for 2 generations on 1 worker: shared,
    read-only (tests that write copy it first)."""
    d = copy_data(models, tmp_path_factory.mktemp("trained_c"))
    train_c(d, "--epochs", 2, "--workers", 1)
    return d


def test_07_same_controller_for_1_and_2_workers(models, trained_c, tmp_path):
    a = trained_c  # --workers 1
    b = copy_data(models, tmp_path / "b")
    train_c(b, "--epochs", 2, "--workers", 2)
    ca = np.load(a / "models" / "controller.npz")
    cb = np.load(b / "models" / "controller.npz")
    for k in ca.files:
        np.testing.assert_array_equal(ca[k], cb[k])
    assert [r["best"] for r in log_rows(a)] == [r["best"] for r in log_rows(b)]
    side = json.loads((a / "models" / "controller.json").read_text())
    assert side["config"] == {"z_size": 8, "hidden_size": 16, "action_size": 2}
    # The saved C is the one evaluated: replayed on 07's evaluation seeds it scores the
    # sidecar's evaluation, and the GIF shows its first episode, a frame a step (the
    # last one held for a second: Pillow writes the repeats as one longer frame)
    vae, _ = saved_models.load_vae(str(a))
    rnn, _ = saved_models.load_rnn(str(a), "dream", 8)
    c, _ = saved_models.load_controller(str(a))
    seeds = evaluation_seeds(derive_seed(0, "controller-eval") % 2**31, 4)
    agent = WorldModelsAgent(4, vae, rnn, c.get_flat()[None])
    summary, shown = evaluate(agent, seeds, sn.EnvConfig(max_steps=40), n_envs=4, record=1)
    assert summary["return_mean"] == side["evaluation"]["return_mean"]
    assert Image.open(a / "results" / "controller_best.gif").n_frames == len(shown[0].frames)
    progress = np.asarray(Image.open(a / "models" / "controller_progress.png").convert("L"))
    assert progress.shape[0] > 100 and progress.std() > 5  # a plot, not a blank page
    # TensorBoard: fitness, sigma and the evaluations, as the log has them (2 workers:
    # the pool's processes fork beside the event writer's thread, and leave it be)
    for d in (a, b):
        events, _ = assert_events_match_log(
            d / "runs" / "controller", d / "models" / "controller_log.csv"
        )
        assert {"best", "mean", "sigma", "eval_return"} <= events["scalars"].keys()


def test_07_resume_is_exact_in_the_dream_and_keeps_diagonal(models, tmp_path):
    """Three generations in one sitting, or two then one more with --resume, give the
    same CMA-ES state and C bit for bit; the resumed sitting, given no --diagonal,
    takes it from the saved state. (The interruption tests resume the full CMA-ES.)"""
    a = copy_data(models, tmp_path / "a")
    b = copy_data(models, tmp_path / "b")
    train_c(a, "--epochs", 3, "--dream", "--workers", 1, "--diagonal")
    train_c(b, "--epochs", 2, "--dream", "--workers", 1, "--diagonal")
    train_c(b, "--epochs", 3, "--dream", "--workers", 1, "--resume")  # the file says diagonal
    assert log_rows(a) and [
        {k: v for k, v in r.items() if k != "seconds"} for r in log_rows(a)
    ] == [{k: v for k, v in r.items() if k != "seconds"} for r in log_rows(b)]
    # CMA-ES's whole state (its history and the diagonal flag with it) and the saved C.
    for name in ("controller_es.npz", "controller.npz"):
        assert_same_arrays(a / "models" / name, b / "models" / name)
    for d in (a, b):
        with np.load(d / "models" / "controller_es.npz") as es:
            assert bool(es["diagonal"]) and len(es["history"]) == 3
    # and the two sittings' TensorBoard curves are the log's
    assert_events_match_log(b / "runs" / "controller", b / "models" / "controller_log.csv")


def test_07_bad_input(models, tmp_path):
    d = copy_data(models, tmp_path)
    assert "--popsize" in one_line_error(train_c(d, "--popsize", "-2", check=False))
    assert "--sigma" in one_line_error(train_c(d, "--sigma", "0", check=False))
    assert "not found" in one_line_error(train_c(d, "--resume", check=False))
    line = one_line_error(train_c(d, "--dream", "--rnn-mode", "window", check=False))
    assert "04_train_rnn.py --mode window" in line
    run("04_train_rnn.py", "--mode", "window", "--epochs", 1, "--hidden", 16, "--data-dir", d)
    line = one_line_error(train_c(d, "--dream", "--rnn-mode", "window", check=False))
    assert "reward and done heads" in line
    assert "03_train_vae.py" in one_line_error(train_c(tmp_path / "empty", check=False))
    assert not (d / "models" / "controller.npz").exists()


def test_08_json_keys_and_table(trained_c, tmp_path):
    d = copy_data(trained_c, tmp_path)
    out = tmp_path / "r.json"
    proc = run(
        "08_test_controller.py", "--episodes", 6, "--record", 1, "--max-steps", 40,
        "--out", out, "--data-dir", d,
    )  # fmt: skip
    report = json.loads(out.read_text())
    for name in ("world_models", "random", "greedy", "greedy_avoid", "oracle"):
        s = report[name]
        for key in (
            "success_rate", "collision_rate", "out_of_map_rate", "timeout_rate", "return_mean",
            "return_std", "episodes", "success_rate_ci95", "personal_space_compliance",
            "min_human_distance_mean", "path_length_mean",
        ):  # fmt: skip
            assert key in s, (name, key)
        assert s["episodes"] == 6
        rates = sum(s[f"{k}_rate"] for k in ("success", "collision", "out_of_map", "timeout"))
        assert rates == pytest.approx(1.0)
        lo, hi = s["success_rate_ci95"]
        assert lo <= s["success_rate"] <= hi
        assert (d / "results" / f"r_{name}_0.gif").exists()
    assert "| world_models |" in proc.stdout and "| oracle |" in proc.stdout


def test_a_c_is_used_only_with_the_v_and_m_it_was_trained_with(trained_c, tmp_path):
    """07 records the hashes of V's and M's files in C's sidecar; after M is retrained,
    08 refuses C in one line (it would read an h it never saw), and the world-model
    check leaves it out of its trained controllers."""
    from lib.diagnostics.world_model import controller_set

    d = copy_data(trained_c, tmp_path)
    side = json.loads((d / "models" / "controller.json").read_text())
    assert side["trained_with"] == saved_models.model_hashes(str(d), "dream")
    _, labels, trained = controller_set(str(d), "dream", 4, 8, 16, np.random.default_rng(0))
    assert trained == 1 and labels[0] == "07's controller"
    shutil.copy(d / "models" / "controller.npz", d / "models" / "c2.npz")
    shutil.copy(d / "models" / "controller.json", d / "models" / "c2.json")
    params, labels, trained = controller_set(
        str(d), "dream", 4, 8, 16, np.random.default_rng(0), names=("c2", "nope", "controller")
    )
    assert trained == 2 and labels[:2] == ["07's c2", "07's controller"]
    np.testing.assert_array_equal(params[0], params[1])
    run("04_train_rnn.py", "--mode", "dream", "--epochs", 1, "--batch-size", 4, "--hidden", 16,
        "--seed", 1, "--overwrite", "--data-dir", d)  # fmt: skip
    line = one_line_error(run_here("08_test_controller.py", "--episodes", 2, "--data-dir", d))
    assert "another V or M" in line and "rnn_dream.npz" in line and "07_train_controller.py" in line
    _, labels, trained = controller_set(str(d), "dream", 4, 8, 16, np.random.default_rng(0))
    assert trained == 0 and all(label.startswith("random") for label in labels)


def test_08_without_controller_and_baselines_only(models, tmp_path):
    d = copy_data(models, tmp_path)
    assert "07_train_controller.py" in one_line_error(
        run_here("08_test_controller.py", "--data-dir", d)
    )
    out = tmp_path / "b.json"
    run(
        "08_test_controller.py",
        "--baselines-only",
        "--episodes",
        4,
        "--record",
        0,
        "--out",
        out,
        "--data-dir",
        d,
    )
    report = json.loads(out.read_text())
    assert "world_models" not in report and report["oracle"]["episodes"] == 4
    assert "--episodes" in one_line_error(
        run_here("08_test_controller.py", "--episodes", "0", "--data-dir", d)
    )


def test_07_name_and_08_controller_keep_two_cs_apart(models, tmp_path):
    d = copy_data(models, tmp_path)
    proc = train_c(d, "--epochs", 2, "--dream", "--workers", 1, "--name", "controller_dream",
                   "--keep", "last", "--eval-every", 1)  # fmt: skip
    m = d / "models"
    # --keep last: every evaluation is saved whatever it scored, so the C left is the
    # last generation's CMA-ES mean, not the room's choice
    assert proc.stdout.count("(saved: --keep last)") == 2 and "new best" not in proc.stdout
    es, _ = CMAES.resume(str(m / "controller_dream_es.npz"), n_params(8, 16))
    c, side = saved_models.load_controller(str(d), "controller_dream")
    np.testing.assert_array_equal(c.get_flat(), es.mean.astype(np.float32))
    assert side["generation"] == 2 and side["args"]["keep"] == "last"
    for f in ("controller_dream.npz", "controller_dream_es.npz", "controller_dream_log.csv"):
        assert (m / f).exists(), f
    assert not (m / "controller.npz").exists() and not (m / "controller_es.npz").exists()
    assert (d / "results" / "controller_dream_best.gif").exists()
    # 08 --controller NAME writes test_NAME.json, leaving the default C's results alone
    run("08_test_controller.py", "--episodes", 3, "--record", 0, "--max-steps", 40,
        "--controller", "controller_dream", "--agent-only", "--data-dir", d)  # fmt: skip
    assert not (d / "results" / "test_controller.json").exists()
    report = json.loads((d / "results" / "test_controller_dream.json").read_text())
    assert set(report) >= {"world_models_dream"} and "greedy" not in report
    assert report["world_models_dream"]["episodes"] == 3
    # The default C is not there: one line naming the file and what to run.
    line = one_line_error(run_here("08_test_controller.py", "--data-dir", d))
    assert "controller.npz" in line and "07_train_controller.py" in line
    assert "--name" in one_line_error(train_c(d, "--name", "../x", check=False))
    assert "--keep" in one_line_error(train_c(d, "--keep", "first", check=False))
    line = one_line_error(run_here("08_test_controller.py", "--agent-only", "--baselines-only"))
    assert "exclude each other" in line


def test_the_agent_sees_frames_drawn_as_vs_were():
    sidecar = {"data": {"identity": {"env": {"view_size": 12.0, "image_size": 64}}}}
    assert saved_models.observation_settings(sidecar) == {"image_size": 64, "view_size": 12.0}
    # A V from before the data's identity was recorded: today's defaults.
    assert saved_models.observation_settings({}) == {
        "image_size": sn.EnvConfig.image_size,
        "view_size": sn.EnvConfig.view_size,
    }
