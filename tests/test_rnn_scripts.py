"""04_train_rnn.py and 06_draw_rnn_result.py end to end on tiny data, plus the
latent cache and the batching they use."""

import csv
import json
import os
import shutil

import cli_helpers
import numpy as np
import pytest
from cli_helpers import (
    assert_events_match_log,
    assert_same_arrays,
    one_line_error,
    run,
    run_here,
    script_module,
)

from lib.data import latents, rnn_data
from lib.env.rollouts import list_rollouts, load_episode
from lib.models import saved_models
from lib.models.mdn_rnn import MDNRNN, calibrated_done_logit, done_logit_threshold, sample
from lib.models.task_head import task_targets
from lib.models.vae import ConvVAE
from lib.seeding import derive_seed
from lib.training import save_model


@pytest.fixture(scope="module")
def trained_v(tiny_models, tmp_path_factory):
    """Tiny V and M data: 6 + 2 episodes of at most 40 steps, V (z 8) trained 1 epoch;
    the session's tiny models without their M and without V's cached encodings."""
    root = tmp_path_factory.mktemp("rnn") / "d"
    shutil.copytree(tiny_models, root)
    for f in (root / "models").glob("rnn_*"):
        f.unlink()
    shutil.rmtree(root / "rnn_data" / "cache", ignore_errors=True)  # V's encodings too
    return root


def copy_data(src, tmp_path):
    dst = tmp_path / "d"
    shutil.copytree(src, dst)
    return dst


def train(d, mode, *extra, check=True):
    """04 at tiny sizes; with check=False (a refusal expected) in this process."""
    args = ("--mode", mode, "--epochs", 2, "--batch-size", 4, "--hidden", 16, "--seq-len", 16,
            "--window", 8, "--data-dir", d, *extra)  # fmt: skip
    return run("04_train_rnn.py", *args) if check else run_here("04_train_rnn.py", *args)


def replace_v(d, z_size=None, nudge=0.0):
    """Writes another V over `d`'s, as 03 would save it: of another z size (with fresh
    weights), or the same V with `nudge` added to its first layer's weights. Faster
    than retraining V (03), which these tests need only for a V that differs."""
    vae, sidecar = saved_models.load_vae(str(d))
    if z_size is not None:
        sidecar["config"]["z_size"] = sidecar["args"]["z_size"] = z_size
        vae = ConvVAE(**sidecar["config"])
    first = next(p for _, p in sorted(vae.namedparams()) if p.array.ndim > 1)
    first.array += np.float32(nudge)
    save_model(str(d / "models" / "vae.npz"), vae, sidecar)


def log_rows(d, mode):
    with open(d / "models" / f"rnn_{mode}_log.csv") as f:
        return list(csv.DictReader(f))


def held_out_by_hand(d, mode):
    """The last epoch's held-out reward MSE and done accuracy of the saved M, worked out
    here by stepping it through each held-out episode (not 04's chunked `evaluate`)."""

    script = script_module("04_train_rnn.py")
    vae, _ = saved_models.load_vae(str(d))
    rnn, sidecar = saved_models.load_rnn(str(d), mode, vae.z_size)
    vae_path = str(d / "models" / "vae.npz")
    train_split = latents.encode_split(str(d / "rnn_data" / "train"), vae, vae_path)[0]
    test = latents.encode_split(str(d / "rnn_data" / "test"), vae, vae_path)[0]
    z_test, _ = script.held_out_baselines(train_split, test, 0, sidecar.get("z_source", "sample"))
    se = right = steps = 0.0
    for e in range(len(test)):
        f0, s0, n = test.frame_offsets[e], test.step_offsets[e], int(test.lengths[e])
        state = None
        for t in range(n):
            out = rnn.step(z_test[f0 + t][None], test.action[s0 + t][None], state)
            state = out.state
            se += float((out.reward[0] - test.reward[s0 + t]) ** 2)
            guess = calibrated_done_logit(out.done_logit, sidecar["done_pos_weight"])[0]
            right += float((guess > done_logit_threshold()) == bool(test.done[s0 + t]))
            steps += 1
    return {"test_reward_mse": se / steps, "test_done_accuracy": right / steps}


@pytest.mark.parametrize("mode", ["normal", "window", "reward", "dream"])
def test_each_mode_trains_and_logs(trained_v, tmp_path, mode):
    d = copy_data(trained_v, tmp_path)
    train(d, mode)
    sidecar = json.loads((d / "models" / f"rnn_{mode}.json").read_text())
    assert sidecar["config"]["z_size"] == 8 and sidecar["mode"] == mode
    heads = mode in ("reward", "dream")
    assert sidecar["config"]["reward_head"] is heads and sidecar["config"]["done_head"] is heads
    rows = log_rows(d, mode)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["test_nll"])) for r in rows)
    # the baselines are scored on the held-out episodes' z, drawn from V's posterior with
    # the run's own stream ("rnn/test-z", the test split's first), the spread from training

    vae, _ = saved_models.load_vae(str(d))
    split = {s: latents.encode_split(str(d / "rnn_data" / s), vae, str(d / "models" / "vae.npz"))[0]
             for s in ("train", "test")}  # fmt: skip
    rng = np.random.default_rng(derive_seed(0, "rnn/test-z"))
    z_test = rnn_data.latents_for(split["test"], "sample", rng)
    z_train = rnn_data.latents_for(split["train"], "sample", rng)
    baselines = rnn_data.baseline_nll(split["train"], z_train, split["test"], z_test)
    for r in rows:
        for name in ("constant_z", "copy_z"):
            assert float(r[f"{name}_nll"]) == pytest.approx(baselines[name], rel=1e-4), name
    if heads:  # the log reports what the saved M does on the held-out episodes
        for key, value in held_out_by_hand(d, mode).items():
            assert float(rows[-1][key]) == pytest.approx(value, rel=1e-4, abs=1e-7), key
    if mode == "dream":
        assert float(rows[0]["ss_prob"]) == 0 and float(rows[1]["ss_prob"]) == pytest.approx(0.5)
    assert (d / "models" / f"rnn_{mode}_loss.png").exists()
    # TensorBoard: the log's curves, and M's open loop drawn after every epoch
    logdir, csv_path = d / "runs" / f"rnn_{mode}", d / "models" / f"rnn_{mode}_log.csv"
    _, batches = assert_events_match_log(logdir, csv_path, images=("open_loop",))
    assert "batch/nll" in batches


def test_resume_is_exact(trained_v, tmp_path):
    a = copy_data(trained_v, tmp_path / "a")
    train(a, "dream")
    b = copy_data(trained_v, tmp_path / "b")
    stopped = train(b, "dream", "--max-iterations", 1)
    assert "continue with --resume" in stopped.stdout
    train(b, "dream", "--resume")
    # The weights and Adam's moments, bit for bit, not the log's rounded figures.
    for name in ("rnn_dream.npz", "rnn_dream_snapshot.npz"):
        assert_same_arrays(a / "models" / name, b / "models" / name)
    assert len(log_rows(b, "dream")) == 2
    # and TensorBoard's curves: the stopped session's points after its snapshot dropped
    runs = [assert_events_match_log(d / "runs" / "rnn_dream", d / "models" / "rnn_dream_log.csv")
            for d in (a, b)]  # fmt: skip
    assert {t: [s for s, _ in p] for t, p in runs[0][1].items()} == {
        t: [s for s, _ in p] for t, p in runs[1][1].items()
    }


def test_keep_best_keeps_the_epoch_of_the_lowest_held_out_nll(trained_v, tmp_path):
    """04 --keep best: rnn_<mode>.npz is the M of the epoch with the lowest held-out NLL,
    bit for bit the M that a run stopping at that epoch saves; the log follows every
    epoch. A high learning rate makes a later epoch worse, so the choice matters."""
    a = copy_data(trained_v, tmp_path / "a")
    out = train(a, "dream", "--epochs", 4, "--lr", 0.05, "--keep", "best")
    nll = [float(r["test_nll"]) for r in log_rows(a, "dream")]
    best = int(np.argmin(nll)) + 1
    assert len(nll) == 4 and best < 4, nll
    assert json.loads((a / "models" / "rnn_dream.json").read_text())["epochs"] == best
    assert f"rnn_dream.npz stays at epoch {best} (--keep best)" in out.stdout
    b = copy_data(trained_v, tmp_path / "b")
    train(b, "dream", "--epochs", best, "--lr", 0.05)
    assert_same_arrays(a / "models" / "rnn_dream.npz", b / "models" / "rnn_dream.npz")


def test_keep_best_needs_held_out_episodes(trained_v, tmp_path):
    d = copy_data(trained_v, tmp_path)
    shutil.rmtree(d / "rnn_data" / "test")
    line = one_line_error(train(d, "dream", "--keep", "best", check=False))
    assert "--keep best" in line and "--testepisodes" in line
    assert not (d / "models" / "rnn_dream.npz").exists()


def test_latent_cache_reused_and_invalidated(trained_v, tmp_path):
    d = copy_data(trained_v, tmp_path)

    vae, _ = saved_models.load_vae(str(d))
    vae_path = str(d / "models" / "vae.npz")
    split = str(d / "rnn_data" / "train")
    data, info = latents.encode_split(split, vae, vae_path)
    assert info["rebuilt"] and len(data) == 6 and data.z_size == 8
    ep = data.episode(0)
    assert len(ep["mu"]) == len(ep["action"]) + 1 and ep["done"][-1] and not ep["done"][:-1].any()
    _, again = latents.encode_split(split, vae, vae_path)
    assert not again["rebuilt"] and again["cache"] == info["cache"]
    # New V weights -> new key.
    replace_v(d, nudge=1e-3)
    _, changed = latents.encode_split(split, vae, vae_path)
    assert changed["rebuilt"] and changed["cache"] != info["cache"]
    # A new episode file -> new key.
    shutil.copy(os.path.join(split, "000000.npz"), os.path.join(split, "000099.npz"))
    data2, more = latents.encode_split(split, vae, vae_path)
    assert more["rebuilt"] and len(data2) == 7


def test_batches_mask_padding_and_windows(trained_v):

    vae, _ = saved_models.load_vae(str(trained_v))
    data, _ = latents.encode_split(
        str(trained_v / "rnn_data" / "train"), vae, str(trained_v / "models" / "vae.npz")
    )
    z = rnn_data.sample_z(data, np.random.default_rng(0))
    eps = np.arange(len(data))
    batch = rnn_data.episode_batch(data, z, eps)
    np.testing.assert_array_equal(batch["mask"].sum(1), data.lengths)
    for row, e in enumerate(eps):
        t = data.lengths[e]
        assert batch["done"][row, t - 1] == 1 and batch["done"][row, t:].sum() == 0
        f0 = data.frame_offsets[e]
        np.testing.assert_array_equal(batch["z_next"][row, : t - 1], batch["z"][row, 1:t])
        np.testing.assert_array_equal(batch["z"][row, 0], z[f0])
    parts = rnn_data.chunks(batch, 16)
    assert sum(p["mask"].sum() for p in parts) == data.lengths.sum()
    plan = rnn_data.window_plan(data, 8, 4, np.random.default_rng(1))
    wb = rnn_data.window_batch(data, z, plan[0], 8)
    assert wb["z"].shape == (4, 8, 8)
    for row, (e, start) in enumerate(plan[0]):
        assert start + min(8, data.lengths[e]) <= data.lengths[e]
        np.testing.assert_array_equal(wb["z"][row, 0], z[data.frame_offsets[e] + start])


def test_baselines_on_known_data():
    # z_{t+1} = z_t + small noise: copying z beats a constant by far.
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(0, 0.1, (201, 4)), axis=0).astype(np.float32)
    arrays = {
        "mu": walk, "logvar": np.full_like(walk, -20.0), "action": np.zeros((200, 2), np.float32),
        "reward": np.zeros(200, np.float32), "done": np.zeros(200, bool),
        "frame_offsets": np.array([0, 201]), "step_offsets": np.array([0, 200]), "files": np.array(["a"]),
    }  # fmt: skip
    data = latents.LatentEpisodes(arrays)
    out = rnn_data.baseline_nll(data, walk, data, walk)
    assert out["copy_z"] < out["constant_z"] - 1.0
    # copy-z NLL of a N(0, 0.1^2) step: 0.5 log(2 pi) + log(0.1) + 0.5
    assert out["copy_z"] == pytest.approx(0.5 * np.log(2 * np.pi) + np.log(0.1) + 0.5, abs=0.1)


def test_draw_rnn_result(trained_v, tmp_path):
    d = copy_data(trained_v, tmp_path)
    train(d, "reward")
    proc = run("06_draw_rnn_result.py", "--mode", "reward", "--dream-steps", 5, "--data-dir", d)
    results = d / "results"
    from PIL import Image

    for name in ("rnn_reward_onestep.png", "rnn_reward_openloop.png"):
        img = np.asarray(Image.open(results / name))
        assert img.ndim == 3 and img.std() > 5
    gif = Image.open(results / "rnn_reward_dream.gif")
    assert gif.n_frames >= 2
    summary = json.loads((results / "rnn_reward_summary.json").read_text())
    # the GIF holds the start and each dreamed step; M's one-step (teacher-forced, tau 0)
    # error, worked out again here through M's whole-sequence forward pass
    assert gif.n_frames == summary["dream_steps"] + 1 and 1 <= summary["dream_steps"] <= 5

    vae, _ = saved_models.load_vae(str(d))
    rnn, _ = saved_models.load_rnn(str(d), "reward", 8)
    data, _ = latents.encode_split(str(d / "rnn_data" / "test"), vae, str(d / "models" / "vae.npz"))
    ep = data.episode(0)
    assert summary["episode"] == data.files[0]
    out = rnn(ep["mu"][None, :-1], ep["action"][None])
    pred = sample(rnn.split(out.mixture.array), 0.0, np.random.default_rng(0))[0]
    expected = float(((pred - ep["mu"][1:]) ** 2).sum(axis=1).mean())
    assert summary["onestep_sq_error"] == pytest.approx(expected, rel=1e-4)
    assert "rnn_reward_dream.gif" in proc.stdout


@pytest.mark.parametrize("args, needle", cli_helpers.bad_flags("04_train_rnn.py"))
def test_bad_flags(trained_v, tmp_path, args, needle):
    cli_helpers.assert_refused("04_train_rnn.py", args, needle, copy_data(trained_v, tmp_path))


def test_no_vae_and_empty_data(tmp_path, trained_v):
    line = one_line_error(run_here("04_train_rnn.py", "--data-dir", tmp_path))
    assert "03_train_vae.py" in line
    d = copy_data(trained_v, tmp_path)
    for f in (d / "rnn_data" / "train").glob("*.npz"):
        f.unlink()
    line = one_line_error(run_here("04_train_rnn.py", "--data-dir", d))
    assert "02_generate_rnn_data.py" in line


def test_vae_of_another_z_size_is_refused(trained_v, tmp_path):
    d = copy_data(trained_v, tmp_path)
    train(d, "window")
    # A V with another z size; resuming M, or drawing it, must refuse.
    replace_v(d, z_size=4)
    line = one_line_error(train(d, "window", "--resume", check=False))
    assert "z_size" in line
    line = one_line_error(run_here("06_draw_rnn_result.py", "--mode", "window", "--data-dir", d))
    assert "size 8" in line and "4" in line


def test_residual_m_starts_from_copying_z():

    m = MDNRNN(z_size=3, hidden_size=8, n_mixtures=2, residual=True)
    m.mdn.W.array[...] = 0.0
    m.mdn.b.array[...] = 0.0
    z = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
    a = np.zeros((2, 4, 2), np.float32)
    out = m(z, a)
    params = m.split(out.mixture.array)
    np.testing.assert_allclose(params.mu, np.repeat(z[..., None], 2, axis=-1), atol=1e-6)
    state = None
    for t in range(4):
        step = m.step(z[:, t], a[:, t], state)
        state = step.state
        np.testing.assert_allclose(step.mixture.mu, params.mu[:, t], atol=1e-6)
    assert m.step(z[:, 0], a[:, 0], mixture=False).mixture is None
    assert MDNRNN(**m.config()).residual


def test_task_weight_trains_ms_head_on_02s_labels_and_refuses_without(trained_v, tmp_path):
    d = copy_data(trained_v, tmp_path)
    # Without labels: one line that says how to get them, and nothing written.
    line = one_line_error(train(d, "dream", "--outcome-head", "--task-weight", 1, check=False))
    assert "--labels" in line and "02_generate_rnn_data.py" in line
    assert not list((d / "models").glob("rnn_dream*"))
    # 02 --labels: the same episodes, labelled; the latent cache carries the labels.
    run("02_generate_rnn_data.py", "--episodes", 6, "--testepisodes", 2, "--max-steps", 40,
        "--workers", 1, "--labels", "oracle", "--overwrite", "--data-dir", d)  # fmt: skip
    proc = train(d, "dream", "--residual", "--outcome-head", "--task-weight", 1)
    assert "task head R²" in proc.stdout
    sidecar = json.loads((d / "models" / "rnn_dream.json").read_text())
    assert sidecar["config"]["task_size"] == 2
    rows = log_rows(d, "dream")

    assert all(float(r["train_task_loss"]) > 0 for r in rows)
    # The held-out R² is 1 - the head's summed squared error over the labelled targets'
    # sum of squares about their mean, both over the test split's steps (the log keeps
    # the error per step and 6 significant digits)

    test_labels = np.concatenate([load_episode(f)["teacher"]
                                  for f in list_rollouts(str(d / "rnn_data" / "test"))])  # fmt: skip
    target, labelled = task_targets(test_labels)
    kept = target[labelled.all(axis=1)]
    total = float(((kept - kept.mean(axis=0)) ** 2).sum())
    for r in rows:
        residual = float(r["test_task_loss"]) * len(test_labels)
        assert float(r["test_task_r2"]) == pytest.approx(1 - residual / total, rel=1e-4, abs=1e-5)
    assert float(rows[-1]["train_task_loss"]) < float(rows[0]["train_task_loss"])

    vae, _ = saved_models.load_vae(str(d))
    data, info = latents.encode_split(
        str(d / "rnn_data" / "train"), vae, str(d / "models" / "vae.npz")
    )
    assert not info["rebuilt"]
    files = list_rollouts(str(d / "rnn_data" / "train"))
    labels = np.concatenate([load_episode(f)["teacher"] for f in files])
    np.testing.assert_array_equal(data.teacher, labels)
    batch = rnn_data.episode_batch(data, data.mu, np.array([1]))
    n = int(data.lengths[1])
    np.testing.assert_array_equal(batch["teacher"][0, :n], data.episode(1)["teacher"])
    assert saved_models.load_rnn(str(d), "dream", 8)[0].task_size == 2  # rebuilt with its head
