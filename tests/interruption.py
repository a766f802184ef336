"""Interrupting a training script and resuming it (tests/test_interrupts_*.py): each
trainer at tiny sizes, run whole, and run, signalled after its first finished epoch or
generation, then resumed; the two must end with the same arrays."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from chainer import serializers
from cli_helpers import assert_same_arrays

from lib import manifest
from lib.models import saved_models
from lib.models.controller import Controller

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(name, *args):
    return [sys.executable, os.path.join(ROOT, name), *map(str, args)]


# Each training script at tiny sizes: its arguments, its snapshot (whose first appearance
# marks the first finished epoch or generation: from then on a run can be resumed), and
# the files an uninterrupted run and a resumed one must hold alike, array for array.
TRAINERS = {
    "03": (
        "03_train_vae.py",
        ["--epochs", 3, "--batch-size", 8, "--test-frames", 0, "--z-size", 8],
        "vae_snapshot.npz",
        ["vae.npz", "vae_snapshot.npz"],
    ),
    "04": (
        "04_train_rnn.py",
        ["--mode", "dream", "--epochs", 3, "--batch-size", 2, "--hidden", 16, "--seq-len", 8],
        "rnn_dream_snapshot.npz",
        ["rnn_dream.npz", "rnn_dream_snapshot.npz"],
    ),
    "07": (
        "07_train_controller.py",
        [  # 5 generations of about a second each: a signal after the first lands mid-run
            "--epochs",
            5,
            "--popsize",
            6,
            "--trials",
            2,
            "--max-steps",
            40,
            "--workers",  # a pool: Ctrl-C reaches its workers too, as at a terminal
            2,
            "--eval-every",
            2,
            "--eval-episodes",
            2,
            "--dream",
        ],
        "controller_es.npz",
        ["controller_es.npz", "controller.npz"],
    ),
    "lookahead": (  # needs a C: fresh_copy gives it a random one
        "07b_train_lookahead.py",
        [
            "--rounds",
            "2",
            "--episodes",
            "8",
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--width",
            "8",
            "--n-envs",
            "4",
            "--no-pixels",
        ],
        "lookahead_snapshot.npz",
        ["lookahead.npz", "lookahead_snapshot.npz"],
    ),
}


def with_random_controller(d):
    """A C for `d`'s V and M (random weights), as 07 would save it."""
    rnn, _ = saved_models.load_rnn(str(d), "dream")
    c = Controller(rnn.z_size, rnn.hidden_size)
    c.set_flat(np.random.default_rng(0).normal(0, 0.1, c.size).astype(np.float32))
    serializers.save_npz(d / "models" / "controller.npz", c)
    manifest.write_json(d / "models" / "controller.json", {
        "config": c.config(), "rnn_mode": "dream",
        "trained_with": saved_models.model_hashes(str(d), "dream"),
    })  # fmt: skip


def fresh_copy(tiny_models, dst, snapshot):
    shutil.copytree(tiny_models, dst)
    for f in (dst / "models").glob(snapshot.replace(".npz", ".*")):
        f.unlink()  # so that its appearance marks the first finished epoch
    if snapshot.startswith("lookahead"):
        with_random_controller(dst)
    return dst


def run_whole(key, tiny_models, tmp_path_factory):
    """The uninterrupted run of trainer `key`: (key, its data folder)."""
    name, args, first, _ = TRAINERS[key]
    d = fresh_copy(tiny_models, tmp_path_factory.mktemp("whole") / "d", first)
    subprocess.run(script(name, *args, "--overwrite", "--data-dir", d), check=True,
                   capture_output=True, cwd=ROOT)  # fmt: skip
    return key, d


def interrupt_and_resume(uninterrupted, sig, tiny_models, tmp_path):
    """Runs trainer `uninterrupted[0]` again, signals its process group with `sig` once
    its first epoch or generation is saved, and resumes it: after Ctrl-C it must exit
    130 without a traceback, naming --resume; after either, the resumed run must end
    with the uninterrupted run's arrays (`TRAINERS`' files; log times aside)."""
    key, whole = uninterrupted
    name, args, first, compared = TRAINERS[key]
    d = fresh_copy(tiny_models, tmp_path / "d", first)
    proc = subprocess.Popen(
        script(name, *args, "--overwrite", "--data-dir", d), cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        # As at a terminal: a shell's background job (nohup, CI) inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
        start_new_session=True,  # its own process group, which a terminal signals whole
    )  # fmt: skip
    deadline = time.time() + 240
    while not (d / "models" / first).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"{name} ended before it could be interrupted"
    os.killpg(proc.pid, sig)  # the script and any worker it has, as Ctrl-C does
    out, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert "Traceback" not in err, err
        assert "--resume" in out + err
    else:
        assert proc.returncode == -signal.SIGKILL
    done = subprocess.run(script(name, *args, "--resume", "--data-dir", d), cwd=ROOT,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, (out, err, done.stderr)
    for f in compared:
        assert_same_arrays(whole / "models" / f, d / "models" / f, skip=("state",))
        with np.load(whole / "models" / f) as a, np.load(d / "models" / f) as b:
            if "state" in a.files:  # the run's counters and log, wall-clock times aside
                assert untimed(a["state"]) == untimed(b["state"])


def untimed(state):
    """A snapshot's JSON state without the seconds its log rows record."""
    state = json.loads(str(state))
    for row in state.get("log", []):
        row.pop("seconds", None)
    return state
