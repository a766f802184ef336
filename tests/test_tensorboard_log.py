"""lib/tensorboard_log.py: event files written, purged on resume, and read back."""

import numpy as np
import pytest

from lib.tensorboard_log import BATCHES, EventLog, read_events, run_dir


def test_rows_become_tagged_points_and_text_and_nan_are_left_out(tmp_path):
    logdir = run_dir(str(tmp_path), "vae")
    with EventLog(logdir) as events:
        events.scalars({"epoch": 1, "train_loss": 2.5, "note": "x", "test_loss": float("nan")},
                       1, skip=("epoch",))  # fmt: skip
        events.scalars({"epoch": 2, "train_loss": np.float32(1.25), "flag": True}, 2, ("epoch",))
        events.image("reconstructions", np.full((4, 6, 3), 200, np.uint8), 2)
    got = read_events(logdir)
    assert got["scalars"] == {"vae/train_loss": [(1, 2.5), (2, 1.25)]}
    assert got["images"] == {"vae/reconstructions": [2]}
    assert not (tmp_path / "runs" / "vae" / BATCHES).exists()  # no batch series: no folder


def test_a_resumed_run_drops_what_the_interrupted_session_wrote_after_its_snapshot(tmp_path):
    logdir = run_dir(str(tmp_path), "rnn_dream")
    first = EventLog(logdir)
    for epoch in (1, 2, 3):  # the snapshot holds epoch 2; epoch 3 came after it
        first.scalars({"nll": 1.0 / epoch}, epoch)
    for b in range(1, 8):
        first.batch({"nll": float(b)}, b)
    first.close()
    with EventLog(logdir, resume_step=3, resume_batch=5) as second:  # batches 1-4 kept
        second.scalars({"nll": 0.25}, 3)
        second.batch({"nll": 50.0}, 5)
    assert read_events(logdir)["scalars"]["rnn_dream/nll"] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    batches = read_events(f"{logdir}/{BATCHES}")["scalars"]["rnn_dream/batch/nll"]
    assert batches == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0)]
    # A new run (no resume) starts the folder afresh.
    with EventLog(logdir) as third:
        third.scalars({"nll": 9.0}, 1)
    assert read_events(logdir)["scalars"] == {"rnn_dream/nll": [(1, 9.0)]}
    assert read_events(f"{logdir}/{BATCHES}")["scalars"] == {}


def test_a_truncated_file_is_refused(tmp_path):
    logdir = run_dir(str(tmp_path), "controller")
    with EventLog(logdir) as events:
        events.scalars({"best": 1.0}, 1)
    path = next((tmp_path / "runs" / "controller").glob("events.out.tfevents.*"))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_events(logdir)
