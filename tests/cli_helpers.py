"""Running the numbered scripts from tests, and checking their one-line errors."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args, check=True, timeout=600):
    """Runs `python <script> <args>` in the repository root; with `check`, a
    non-zero exit fails the test with the script's output."""
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_tiny_models(root, rollouts=3, episodes=6, rnn_epochs=1, vae_batch=64):
    """Tiny data (40-step episodes) and models in `root`: V with z 8, and M in dream
    mode (hidden 16, reward and done heads). Returns `root`."""
    common = ["--max-steps", 40, "--workers", 1, "--data-dir", root]
    run("01_generate_vae_data.py", "--rollouts", rollouts, "--testrollouts", 1, *common)
    run("02_generate_rnn_data.py", "--episodes", episodes, "--testepisodes", 2, *common)
    run("03_train_vae.py", "--epochs", 1, "--batch-size", vae_batch, "--z-size", 8,
        "--data-dir", root)  # fmt: skip
    run("04_train_rnn.py", "--mode", "dream", "--epochs", rnn_epochs, "--batch-size", 4,
        "--hidden", 16, "--data-dir", root)  # fmt: skip
    return root


def one_line_error(proc):
    """The single `error:` line of a failed run (asserting there is exactly one,
    a non-zero exit and no traceback)."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if "error:" in ln]
    assert len(lines) == 1, proc.stderr
    return lines[0]
