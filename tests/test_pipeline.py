"""The whole pipeline, 01 -> 08, at tiny sizes in one temporary data dir:
every step's outputs exist, have the documented shapes and keys, and the
images are not blank."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def not_blank(path):
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.ndim == 3 and image.shape[0] >= 32 and image.shape[1] >= 32, path
    assert image.std() > 5, f"{path} looks blank"


def test_pipeline_end_to_end(tmp_path):
    d = tmp_path / "data"
    tiny_env = ["--max-steps", 40, "--workers", 2, "--data-dir", d]

    run("01_generate_vae_data.py", "--rollouts", 4, "--testrollouts", 1, *tiny_env)
    run("02_generate_rnn_data.py", "--episodes", 8, "--testepisodes", 2, *tiny_env)
    for split, n in (
        ("vae_data/train", 4),
        ("vae_data/test", 1),
        ("rnn_data/train", 8),
        ("rnn_data/test", 2),
    ):
        files = sorted((d / split).glob("*.npz"))
        assert len(files) == n, split
        with np.load(files[0], allow_pickle=False) as z:
            t = len(z["action"])
            assert z["obs"].shape == (t + 1, 64, 64, 3) and z["obs"].dtype == np.uint8
            assert z["action"].shape == (t, 2) and z["reward"].shape == (t,) and z["done"][-1]
    not_blank(d / "vae_data" / "preview.png")

    run("03_train_vae.py", "--epochs", 1, "--batch-size", 64, "--z-size", 8, "--data-dir", d)
    vae_side = json.loads((d / "models" / "vae.json").read_text())
    assert vae_side["config"]["z_size"] == 8
    not_blank(d / "results" / "vae_training" / "epoch_0001.png")

    run(
        "04_train_rnn.py",
        "--mode",
        "dream",
        "--epochs",
        1,
        "--batch-size",
        4,
        "--hidden",
        16,
        "--data-dir",
        d,
    )
    rnn_side = json.loads((d / "models" / "rnn_dream.json").read_text())
    assert rnn_side["config"]["reward_head"] and rnn_side["config"]["hidden_size"] == 16

    run("05_draw_vae_result.py", "--frames", 4, "--rows", 1, "--dims", 2, "--data-dir", d)
    for name in ("vae_reconstructions.png", "vae_samples.png", "vae_traversal.png"):
        not_blank(d / "results" / name)

    run("06_draw_rnn_result.py", "--mode", "dream", "--dream-steps", 6, "--data-dir", d)
    for name in ("rnn_dream_onestep.png", "rnn_dream_openloop.png"):
        not_blank(d / "results" / name)
    assert Image.open(d / "results" / "rnn_dream_dream.gif").n_frames >= 2

    run(
        "07_train_controller.py", "--dream", "--epochs", 2, "--popsize", 4, "--trials", 2,
        "--eval-every", 1, "--eval-episodes", 4, "--max-steps", 40, "--workers", 1, "--data-dir", d,
    )  # fmt: skip
    c_side = json.loads((d / "models" / "controller.json").read_text())
    assert (
        c_side["config"] == {"z_size": 8, "hidden_size": 16, "action_size": 2} and c_side["dream"]
    )
    with np.load(d / "models" / "controller.npz", allow_pickle=False) as z:
        assert sum(z[k].size for k in z.files) == (8 + 16) * 2 + 2
    not_blank(d / "models" / "controller_progress.png")
    not_blank(d / "results" / "controller_best.gif")

    out = run(
        "08_test_controller.py", "--episodes", 4, "--record", 1, "--max-steps", 40, "--data-dir", d
    )
    report = json.loads((d / "results" / "test_controller.json").read_text())
    assert {"world_models", "random", "greedy", "greedy_avoid", "oracle"} <= set(report)
    assert all(report[k]["episodes"] == 4 for k in ("world_models", "oracle"))
    assert "| world_models |" in out
    not_blank(d / "results" / "test_world_models_0.gif")
