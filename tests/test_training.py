"""lib/training.py's run rules: resume/overwrite and the NaN guard's message."""

import math

import pytest

from lib import training


def test_check_run(tmp_path):
    snap = str(tmp_path / "m_snapshot.npz")
    training.check_run(snap, resume=False, overwrite=False)  # a fresh run
    with pytest.raises(training.RunConflict, match="--resume: .* not found"):
        training.check_run(snap, resume=True, overwrite=False)
    (tmp_path / "m_snapshot.npz").write_bytes(b"x")
    with pytest.raises(training.RunConflict, match="pass --resume .* or --overwrite"):
        training.check_run(snap, resume=False, overwrite=False)
    training.check_run(snap, resume=True, overwrite=False)
    training.check_run(snap, resume=False, overwrite=True)


def test_check_loss(tmp_path):
    snap = str(tmp_path / "m_snapshot.npz")
    assert training.check_loss(1.5, "the loss", 1, 1, snap) == 1.5
    with pytest.raises(training.NonFiniteLoss) as e:
        training.check_loss(math.nan, "the M loss", 3, 7, snap)
    assert str(e.value) == (
        "the M loss is nan at epoch 3, batch 7; no snapshot was written — try a lower --lr"
    )
    (tmp_path / "m_snapshot.npz").write_bytes(b"x")
    with pytest.raises(training.NonFiniteLoss, match=f"last good snapshot {snap} is kept"):
        training.check_loss(math.inf, "the M loss", 3, 7, snap)


def test_end_of_epoch_snapshots_and_exit():
    saved = []
    stop = training.DeferredInterrupt(max_iterations=None)
    due = [stop.snapshot_if_due(e, 5, 2, lambda e=e: saved.append(e)) for e in range(1, 6)]
    assert saved == [2, 4, 5] and due == [False, True, False, True, True]
    stop.stop_if_requested("snap.npz", "after epoch 5")  # nothing requested: returns
    budget = training.DeferredInterrupt(max_iterations=1)
    budget.count()
    assert budget.snapshot_if_due(1, 5, 2, lambda: saved.append("stop"))  # a stop is due
    assert saved[-1] == "stop"
    with pytest.raises(training.Stopped, match="continue with --resume") as e:
        budget.stop_if_requested("snap.npz", "after epoch 1")
    assert e.value.code == 0  # the budget, not Ctrl-C


def test_a_checking_progress_bar_stops_after_the_unit_under_way():
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    stop = training.DeferredInterrupt()
    bar = Bar()
    progress = stop.checking(bar)
    progress.update(1)  # nothing requested
    stop.raise_if_interrupted()
    stop.requested = True  # as the first Ctrl-C leaves it
    with pytest.raises(training.Stopped) as e:
        progress.update(1)
    assert bar.n == 2 and e.value.code == 130  # counted, then stopped
    with pytest.raises(training.Stopped):
        stop.raise_if_interrupted()
    # A caller's message says what is kept (the look-ahead trainer's play: its snapshot)
    with pytest.raises(training.Stopped, match="^kept: the last snapshot$"):
        stop.checking(bar, "kept: the last snapshot").update(1)


def test_epoch_means_since_last_is_each_batchs_mean_from_a_resumed_epoch_too():
    means = training.EpochMeans(["loss"])
    means.add({"loss": 2.0}, 3)  # one batch in two chunks: 3 steps at 2, 1 step at 6
    means.add({"loss": 6.0}, 1)
    assert means.since_last() == {"loss": 3.0}
    means.add({"loss": 1.0}, 2)
    assert means.since_last() == {"loss": 1.0}
    assert means.mean("loss") == pytest.approx(14 / 6)
    resumed = training.EpochMeans(["loss"], means.state())  # a snapshot taken mid-epoch
    resumed.add({"loss": 4.0}, 2)
    assert resumed.since_last() == {"loss": 4.0}
    assert resumed.since_last() == {"loss": 0.0}  # nothing added since


def test_data_line():
    assert (
        training.data_line("9 frames", "3 frames", "no loss") == "train: 9 frames; test: 3 frames"
    )
    assert (
        training.data_line("9 frames", None, "no loss") == "train: 9 frames; no test split: no loss"
    )
