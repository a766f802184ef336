"""Ctrl-C and kill -9 during training, then --resume, give the uninterrupted run's
weights (03 and 04 here, 07 and the look-ahead trainer in test_interrupts_controllers.py:
two files, so that pytest's workers share them); `--backend ray` makes the same data."""

import signal
import subprocess

import numpy as np
import pytest
from interruption import interrupt_and_resume, run_whole, script


@pytest.fixture(scope="module", params=["03", "04"])
def uninterrupted(request, tiny_models, tmp_path_factory):
    return run_whole(request.param, tiny_models, tmp_path_factory)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_an_interrupted_run_resumes_to_the_same_weights(uninterrupted, sig, tiny_models, tmp_path):
    """Ctrl-C (a snapshot mid-epoch, exit 130, one message naming --resume) or kill -9 (no
    chance to save: the last epoch's snapshot) during the second epoch, then --resume:
    the weights, the optimizer's state and the counters are those of the uninterrupted
    run, bit for bit."""
    interrupt_and_resume(uninterrupted, sig, tiny_models, tmp_path)


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
