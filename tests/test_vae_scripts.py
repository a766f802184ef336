"""03_train_vae.py and 05_draw_vae_result.py end to end on tiny data, plus the
frame cache they read through."""

import csv
import json
import os
import shutil
import zipfile

import cli_helpers
import numpy as np
import pytest
from cli_helpers import assert_events_match_log, assert_same_arrays, one_line_error, run, run_here

from lib.data import frames
from lib.env import socnavenv as sn
from lib.models.task_head import task_loss, task_targets
from lib.models.vae import (
    ConvVAE,
    VAELoss,
    goal_weights,
    object_weights,
)


def tiny_vae_data(root, *flags):
    """01's tiny dataset (4 + 1 rollouts of at most 30 steps) in `root`, with `flags`."""
    run(
        "01_generate_vae_data.py",
        "--rollouts", 4, "--testrollouts", 1, "--max-steps", 30, "--workers", 1,
        *flags, "--data-dir", root,
    )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def vae_data(tmp_path_factory):
    return tiny_vae_data(tmp_path_factory.mktemp("vaedata"))


def copy_data(vae_data, tmp_path):
    dst = tmp_path / "d"
    shutil.copytree(vae_data, dst)
    return dst


def log_rows(data_dir):
    with open(os.path.join(data_dir, "models", "vae_log.csv")) as f:
        return list(csv.DictReader(f))


def test_train_writes_model_sidecar_log_and_images(vae_data, tmp_path):
    d = copy_data(vae_data, tmp_path)
    run("03_train_vae.py", "--epochs", 2, "--batch-size", 32, "--data-dir", d)
    models = d / "models"
    for name in ("vae.npz", "vae.json", "vae_snapshot.npz", "vae_log.csv", "vae_loss.png"):
        assert (models / name).exists(), name
    sidecar = json.loads((models / "vae.json").read_text())
    assert sidecar["config"]["z_size"] == 32 and sidecar["epochs"] == 2
    rows = log_rows(d)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["test_loss"])) for r in rows)
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    assert (d / "results" / "vae_training" / "epoch_0002.png").exists()
    # TensorBoard's curves are the log's, and V's reconstructions every epoch
    _, batches = assert_events_match_log(d / "runs" / "vae", models / "vae_log.csv",
                                         images=("reconstructions",))  # fmt: skip
    assert "batch/loss" in batches


def test_resume_continues_exactly(vae_data, tmp_path):
    full = copy_data(vae_data, tmp_path / "a")
    run("03_train_vae.py", "--epochs", 2, "--batch-size", 32, "--data-dir", full)
    part = copy_data(vae_data, tmp_path / "b")
    stopped = run(
        "03_train_vae.py",
        "--epochs",
        2,
        "--batch-size",
        32,
        "--data-dir",
        part,
        "--max-iterations",
        2,
    )
    assert "continue with --resume" in stopped.stdout
    assert not (part / "models" / "vae_log.csv").read_text().strip().count("\n")  # no epoch done
    run("03_train_vae.py", "--epochs", 2, "--batch-size", 32, "--data-dir", part, "--resume")
    a, b = log_rows(full), log_rows(part)
    for key in ("train_loss", "train_rec", "train_kl", "test_loss"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    for name in ("vae.npz", "vae_snapshot.npz"):  # weights and Adam's moments
        assert_same_arrays(full / "models" / name, part / "models" / name)
    # The resumed run's TensorBoard curves are the log's too: what the first session
    # wrote after its snapshot is dropped (a purge step), none is doubled
    _, a_batches = assert_events_match_log(full / "runs" / "vae", full / "models" / "vae_log.csv")
    _, b_batches = assert_events_match_log(part / "runs" / "vae", part / "models" / "vae_log.csv")
    assert a_batches.keys() == b_batches.keys()
    for tag in a_batches:
        assert [s for s, _ in a_batches[tag]] == [s for s, _ in b_batches[tag]], tag


def test_refuses_to_overwrite_and_mismatched_resume(vae_data, tmp_path):
    d = copy_data(vae_data, tmp_path)
    run("03_train_vae.py", "--epochs", 1, "--batch-size", 32, "--data-dir", d)
    before = (d / "models" / "vae.npz").read_bytes()
    line = one_line_error(run_here("03_train_vae.py", "--epochs", 2, "--data-dir", d))
    assert "--resume" in line and "--overwrite" in line
    line = one_line_error(
        run_here(
            "03_train_vae.py",
            "--epochs",
            2,
            "--z-size",
            16,
            "--resume",
            "--data-dir",
            d,
        )
    )
    assert "z_size" in line or "--z-size" in line
    assert (d / "models" / "vae.npz").read_bytes() == before


@pytest.mark.parametrize("args, needle", cli_helpers.bad_flags("03_train_vae.py"))
def test_bad_input_one_line(vae_data, tmp_path, args, needle):
    cli_helpers.assert_refused("03_train_vae.py", args, needle, copy_data(vae_data, tmp_path))


def test_missing_data_says_what_to_run(tmp_path):
    line = one_line_error(run_here("03_train_vae.py", "--data-dir", tmp_path))
    assert "01_generate_vae_data.py" in line
    line = one_line_error(run_here("05_draw_vae_result.py", "--data-dir", tmp_path))
    assert "03_train_vae.py" in line


def test_nan_loss_stops_and_keeps_last_snapshot(vae_data, tmp_path):
    d = copy_data(vae_data, tmp_path)
    run("03_train_vae.py", "--epochs", 1, "--batch-size", 32, "--data-dir", d)
    snap = (d / "models" / "vae_snapshot.npz").read_bytes()
    proc = run(
        "03_train_vae.py", "--epochs", 3, "--batch-size", 32, "--lr", "1e30", "--data-dir", d,
        "--overwrite", check=False,
    )  # fmt: skip
    line = one_line_error(proc)
    assert proc.returncode == 1
    assert "nan" in line.lower() or "inf" in line.lower()
    assert "kept" in line
    assert (d / "models" / "vae_snapshot.npz").read_bytes() == snap


def test_corrupt_rollout_is_skipped_and_counted(vae_data, tmp_path):
    d = copy_data(vae_data, tmp_path)
    train = d / "vae_data" / "train"
    (train / "000001.npz").write_bytes(b"not a zip file")
    with zipfile.ZipFile(train / "000009.npz", "w") as z:
        z.writestr("obs.npy", b"\x93NUMPY garbage")
    _, index = frames.build_cache(str(train))
    assert len(index["skipped"]) == 2
    assert index["rollouts"] == 3
    proc = run("03_train_vae.py", "--epochs", 1, "--batch-size", 32, "--data-dir", d)
    assert "2 bad files skipped" in proc.stdout


def test_frame_cache_matches_files_and_is_reused(vae_data, tmp_path):
    d = copy_data(vae_data, tmp_path)
    train = d / "vae_data" / "train"
    path, index = frames.build_cache(str(train), max_rollouts=2)
    obs = [np.load(train / f"{i:06d}.npz")["obs"] for i in range(2)]
    store = frames.FrameStore(path, release_every=1)
    assert len(store) == index["frames"] == sum(len(o) for o in obs)
    expected = np.concatenate(obs)
    idx = np.array([5, 0, len(store) - 1, 3])
    np.testing.assert_array_equal(store.batch(idx), expected[idx])
    mtime = os.path.getmtime(path)
    again, _ = frames.build_cache(str(train), max_rollouts=2)
    assert again == path and os.path.getmtime(path) == mtime
    other, _ = frames.build_cache(str(train), max_rollouts=3)
    assert other != path


def test_draw_vae_result(vae_data, tmp_path):
    d = copy_data(vae_data, tmp_path)
    run("03_train_vae.py", "--epochs", 1, "--batch-size", 32, "--data-dir", d)
    proc = run("05_draw_vae_result.py", "--data-dir", d, "--frames", 4, "--rows", 1, "--dims", 2)
    results = d / "results"
    from PIL import Image

    for name in ("vae_reconstructions.png", "vae_samples.png", "vae_traversal.png"):
        img = np.asarray(Image.open(results / name))
        assert img.ndim == 3 and img.shape[0] > 64 and img.std() > 5, name
    summary = json.loads((results / "vae_summary.json").read_text())
    assert len(summary["kl_per_dim"]) == 32
    assert summary["reconstruction_sse_per_frame"] > 0
    assert "vae_traversal.png" in proc.stdout


def test_object_weights_favour_coloured_pixels():
    pixels = np.array([[sn.FLOOR_RGB, sn.WALL_RGB, sn.OUTSIDE_RGB, sn.GOAL_RGB, sn.HUMAN_RGB]])
    w = object_weights((pixels / 255.0).astype(np.float32)[None], 10.0)[0, 0, :, 0]
    np.testing.assert_allclose(w[:3], [1 + 9 * 6 / 255, 1.0, 1 + 9 * 8 / 255], rtol=1e-5)
    np.testing.assert_allclose(w[3:], [1 + 9 * 160 / 255, 1 + 9 * 180 / 255], rtol=1e-5)
    np.testing.assert_array_equal(object_weights(np.zeros((1, 2, 2, 3), np.float32), 1.0), 1.0)


def test_object_weight_flag(vae_data, tmp_path):
    d = copy_data(vae_data, tmp_path)
    line = one_line_error(run_here("03_train_vae.py", "--object-weight", "0.5", "--data-dir", d))
    assert "--object-weight" in line
    run(
        "03_train_vae.py", "--epochs", 1, "--batch-size", 32, "--object-weight", 10, "--data-dir", d
    )
    sidecar = json.loads((d / "models" / "vae.json").read_text())
    assert sidecar["object_weight"] == 10.0
    # The reported reconstruction error stays the plain one (comparable across weights).
    rows = log_rows(d)
    assert 0 < float(rows[0]["train_rec"]) < float(rows[0]["train_loss"])


def test_keypoints_flag(vae_data, tmp_path):
    d = copy_data(vae_data, tmp_path)
    line = one_line_error(run_here("03_train_vae.py", "--keypoints", "-2", "--data-dir", d))
    assert "--keypoints" in line
    run("03_train_vae.py", "--epochs", 1, "--batch-size", 32, "--keypoints", 6, "--z-size", 8,
        "--max-iterations", 1, "--data-dir", d)  # fmt: skip
    config = json.loads((d / "models" / "vae_snapshot.json").read_text())["config"]
    assert config["keypoints"] == 6 and config["enc_channels"] == [32, 64]
    # A snapshot of a keypoint V does not resume as another V.
    args = ["--epochs", 1, "--batch-size", 32, "--z-size", 8, "--resume", "--data-dir", d]
    line = one_line_error(run_here("03_train_vae.py", *args))
    assert "--keypoints" in line
    run("03_train_vae.py", "--epochs", 1, "--batch-size", 32, "--keypoints", 6, "--z-size", 8,
        "--resume", "--data-dir", d)  # fmt: skip
    sidecar = json.loads((d / "models" / "vae.json").read_text())
    assert sidecar["config"]["keypoints"] == 6


def test_goal_weights_single_out_the_goal():
    pixels = np.array([sn.GOAL_RGB, sn.HUMAN_RGB, sn.ROBOT_RGB, sn.FLOOR_RGB, sn.WALL_RGB])
    target = (pixels / 255.0).astype(np.float32).reshape(1, 1, 5, 3)
    w = goal_weights(target, 5.0)[0, 0, :, 0]
    np.testing.assert_allclose(w, [5.0, 1.0, 1.0, 1.0, 1.0], rtol=1e-5)
    np.testing.assert_array_equal(goal_weights(target, 1.0), 1.0)


def test_goal_weight_flag(vae_data, tmp_path):
    d = copy_data(vae_data, tmp_path)
    line = one_line_error(run_here("03_train_vae.py", "--goal-weight", "0.5", "--data-dir", d))
    assert "--goal-weight" in line
    run("03_train_vae.py", "--epochs", 1, "--batch-size", 32, "--object-weight", 10,
        "--goal-weight", 3, "--data-dir", d)  # fmt: skip
    sidecar = json.loads((d / "models" / "vae.json").read_text())
    assert (sidecar["object_weight"], sidecar["goal_weight"]) == (10.0, 3.0)


def test_spatial_flag(vae_data, tmp_path):
    d = copy_data(vae_data, tmp_path)
    for flags, word in (
        (["--spatial", "-1"], "--spatial"),
        (["--spatial", "2", "--keypoints", "3"], "--keypoints"),
        (["--spatial", "2", "--z-size", "10"], "--z-size"),
    ):
        line = one_line_error(run_here("03_train_vae.py", *flags, "--data-dir", d))
        assert word in line, (flags, line)
    assert not os.path.exists(d / "models" / "vae_snapshot.npz")
    run("03_train_vae.py", "--epochs", 1, "--batch-size", 32, "--spatial", 2,
        "--max-iterations", 1, "--data-dir", d)  # fmt: skip
    config = json.loads((d / "models" / "vae_snapshot.json").read_text())["config"]
    assert (
        config["spatial"] == 2
        and config["z_size"] == 72
        and config["enc_channels"] == [32, 64, 128]
    )
    # A spatial V's snapshot resumes only as the same V.
    line = one_line_error(run_here("03_train_vae.py", "--epochs", 1, "--resume", "--data-dir", d))
    assert "--spatial" in line
    run("03_train_vae.py", "--epochs", 1, "--batch-size", 32, "--spatial", 2, "--z-size", 72,
        "--resume", "--data-dir", d)  # fmt: skip
    assert json.loads((d / "models" / "vae.json").read_text())["config"]["spatial"] == 2


# ---------------------------------------------------------------------------
# The task head (01 --labels, 03 --task-weight)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def labelled_data(tmp_path_factory):
    return tiny_vae_data(tmp_path_factory.mktemp("labelled"), "--labels", "oracle")


def test_task_targets_and_loss():
    import chainer

    labels = np.array([[1.0, -0.5], [np.nan, np.nan], [0.0, -1.0]], np.float32)
    target, mask = task_targets(labels)
    np.testing.assert_allclose(target[0], [np.arctanh(0.96), np.arctanh(-0.5)], rtol=1e-6)
    np.testing.assert_array_equal(mask, [[1, 1], [0, 0], [1, 1]])
    assert np.isfinite(target).all()
    prediction = chainer.Variable(np.zeros((3, 2), np.float32))
    expected = (target[0] ** 2).sum() + (target[2] ** 2).sum()  # the NaN row counts nothing
    np.testing.assert_allclose(task_loss(prediction, labels).array, expected / 3, rtol=1e-6)


def test_task_weight_needs_a_head_and_labels():
    vae = ConvVAE(z_size=8)
    with pytest.raises(ValueError, match="task head"):
        VAELoss(vae, task_weight=1.0)
    vae = ConvVAE(z_size=8, task_size=2)
    assert vae.config()["task_size"] == 2 and vae.task.W.shape == (2, 8)
    assert "task_size" not in ConvVAE(z_size=8).config()  # the paper's V is unchanged
    loss = VAELoss(vae, task_weight=1.0)
    x = np.zeros((2, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="labels"):
        loss(x)
    plain = float(VAELoss(vae, rng=np.random.default_rng(0))(x).array)
    with_task = float(loss.__class__(vae, rng=np.random.default_rng(0), task_weight=3.0)(
        x, np.full((2, 2), 0.5, np.float32)
    ).array)  # fmt: skip
    mu = vae.encode(x)[0]
    extra = 3.0 * float(task_loss(vae.task(mu), np.full((2, 2), 0.5, np.float32)).array)
    np.testing.assert_allclose(with_task, plain + extra, rtol=1e-5)


def test_frame_cache_carries_the_teacher_labels(labelled_data, vae_data):
    split = os.path.join(labelled_data, "vae_data", "train")
    npy, index = frames.build_cache(split)
    store = frames.FrameStore(npy, index["teacher"])
    expected = []
    for path in sorted(os.listdir(split)):
        with np.load(os.path.join(split, path)) as z:
            expected += [z["teacher"], np.full((1, 2), np.nan, np.float32)]
    expected = np.concatenate(expected)
    assert len(store) == len(expected)
    np.testing.assert_array_equal(store.labels(np.arange(len(store))), expected)
    np.testing.assert_array_equal(store.labels([3, 0]), expected[[3, 0]])
    npy, index = frames.build_cache(os.path.join(vae_data, "vae_data", "train"))
    assert index["teacher"] is None
    with pytest.raises(ValueError, match="--labels"):
        frames.FrameStore(npy).labels([0])


def test_task_weight_flag(labelled_data, vae_data, tmp_path):
    d = copy_data(vae_data, tmp_path / "plain")
    line = one_line_error(run_here("03_train_vae.py", "--task-weight", 10, "--data-dir", d))
    assert "--labels oracle" in line
    assert not (d / "models").exists() or not os.listdir(d / "models")
    line = one_line_error(run_here("03_train_vae.py", "--task-weight", -1, "--data-dir", d))
    assert "--task-weight" in line
    d = copy_data(labelled_data, tmp_path / "labelled")
    result = run("03_train_vae.py", "--epochs", 2, "--batch-size", 32, "--spatial", 2,
                 "--task-weight", 100, "--lr", 1e-3, "--data-dir", d)  # fmt: skip
    assert "held-out R²" in result.stdout
    sidecar = json.loads((d / "models" / "vae.json").read_text())
    assert sidecar["config"]["task_size"] == 2 and sidecar["task_weight"] == 100.0
    rows = log_rows(d)
    assert all(np.isfinite(float(r["test_task_r2"])) for r in rows)
    assert float(rows[1]["train_task"]) < float(rows[0]["train_task"])
    # The agent's loader rebuilds the V with its head; the head's own prediction on the
    # held-out frames is what the log's R² scored.
    from lib.models import saved_models

    vae, _ = saved_models.load_vae(str(d))
    assert vae.task_size == 2
