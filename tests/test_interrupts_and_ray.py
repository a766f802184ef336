"""Ctrl-C on a long run saves and resumes; `--backend ray` makes the same data."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(name, *args):
    return [sys.executable, os.path.join(ROOT, name), *map(str, args)]


def test_ctrl_c_saves_a_snapshot_and_resume_finishes(tmp_path):
    d = tmp_path / "d"
    subprocess.run(
        script(
            "01_generate_vae_data.py",
            "--rollouts",
            6,
            "--testrollouts",
            1,
            "--workers",
            1,
            "--data-dir",
            d,
        ),
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        script(
            "03_train_vae.py",
            "--epochs",
            50,
            "--batch-size",
            16,
            "--test-frames",
            0,
            "--data-dir",
            d,
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Interrupt once training has written its first epoch.
    deadline = time.time() + 240
    while not (d / "models" / "vae.npz").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (d / "models" / "vae.npz").exists(), "training never finished an epoch"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err
    assert "--resume" in out + err
    assert (d / "models" / "vae_snapshot.npz").exists()
    with np.load(d / "models" / "vae_snapshot.npz") as z:
        assert "state" in z.files
    done = subprocess.run(
        script(
            "03_train_vae.py",
            "--epochs",
            3,
            "--batch-size",
            16,
            "--test-frames",
            0,
            "--resume",
            "--data-dir",
            d,
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = (d / "models" / "vae_log.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]


def test_rollouts_through_ray_match_local(tmp_path):
    pytest.importorskip("ray")
    common = ["--rollouts", 3, "--testrollouts", 0, "--max-steps", 30, "--workers", 2]
    subprocess.run(
        script("01_generate_vae_data.py", *common, "--data-dir", tmp_path / "a"),
        check=True,
        capture_output=True,
    )
    proc = subprocess.run(
        script(
            "01_generate_vae_data.py", *common, "--backend", "ray", "--data-dir", tmp_path / "b"
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for i in range(3):
        a = np.load(tmp_path / "a" / "vae_data" / "train" / f"{i:06d}.npz")
        b = np.load(tmp_path / "b" / "vae_data" / "train" / f"{i:06d}.npz")
        for key in ("obs", "action", "reward", "done"):
            np.testing.assert_array_equal(a[key], b[key])
