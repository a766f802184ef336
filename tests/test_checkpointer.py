"""lib/checkpointer.py: the run rules, exact resume, the snapshot interval and the stops;
and lib/training.py's EpochMeans."""

import chainer
import chainer.links as L
import numpy as np
import pytest

from lib import manifest, training
from lib.checkpointer import Checkpointer

N_BATCHES = 3


def make(path, resume=False, overwrite=False, interval=1, max_iterations=None):
    """A run over a tiny linear model, its Adam and one named generator."""
    run = Checkpointer(str(path), resume, overwrite, interval, max_iterations)
    np.random.seed(0)  # Chainer's initializers
    model = L.Linear(3, 2)
    optimizer = chainer.optimizers.Adam(alpha=0.05)
    optimizer.setup(model)
    rng = np.random.default_rng(7)
    run.track(model, optimizer, rngs={"data_rng": rng}, settings={"config": {"n_in": 3}})
    return run, model, rng


def train(run, model, rng, epochs, seen):
    """Trains until `epochs`, appending (epoch, batch, loss, epoch mean so far) to `seen`."""
    with run:
        for epoch in run.epochs(epochs):
            means = training.EpochMeans(["loss"], run.partial)
            with run.batches(N_BATCHES, f"epoch {epoch + 1}") as bar:
                for it in bar:
                    x = rng.standard_normal((4, 3)).astype(np.float32)
                    loss = chainer.functions.sum(model(x) ** 2)
                    run.check_loss(float(loss.array), "the loss")
                    model.cleargrads()
                    loss.backward()
                    run.optimizer.update()
                    means.add({"loss": loss}, len(x))
                    seen.append((epoch, it, float(loss.array), means.mean("loss")))
                    run.batch_done(means.state())


def test_refuses_to_overwrite_or_to_resume_nothing(tmp_path):
    snap = tmp_path / "m_snapshot.npz"
    with pytest.raises(training.RunConflict, match="--resume: .* not found"):
        Checkpointer(str(snap), resume=True)
    run, model, rng = make(snap)
    train(run, model, rng, 1, [])
    assert snap.exists()
    with pytest.raises(training.RunConflict, match="pass --resume .* or --overwrite"):
        Checkpointer(str(snap))
    Checkpointer(str(snap), overwrite=True)  # allowed
    Checkpointer(str(snap), resume=True)  # allowed


def test_resume_after_a_budget_stop_is_exact(tmp_path):
    whole, whole_model, whole_rng = make(tmp_path / "a.npz")
    expected = []
    train(whole, whole_model, whole_rng, 3, expected)

    part, model, rng = make(tmp_path / "b.npz", max_iterations=4)  # stops at epoch 2, batch 1
    seen = []
    with pytest.raises(training.Stopped) as stop:
        train(part, model, rng, 3, seen)
    assert stop.value.code == 0  # the budget, not Ctrl-C
    assert str(stop.value) == (
        f"stopped after 4 batches: saved {tmp_path / 'b.npz'} (epoch 2, batch 1) — "
        "continue with --resume"
    )
    sidecar = manifest.read_json(training.sidecar_path(str(tmp_path / "b.npz")))
    assert sidecar == {"config": {"n_in": 3}, "epoch": 1, "iteration": 1}

    resumed, model2, rng2 = make(tmp_path / "b.npz", resume=True)
    assert resumed.restore() == {}
    assert (resumed.epoch, resumed.iteration) == (1, 1)
    assert resumed.partial["count"] == 4 and resumed.saved_settings() == sidecar
    assert rng2.bit_generator.state == rng.bit_generator.state  # the generator, exactly
    train(resumed, model2, rng2, 3, seen)
    assert seen == expected  # every loss and running mean, bit for bit
    np.testing.assert_array_equal(model2.W.array, whole_model.W.array)
    assert resumed.optimizer.t == whole.optimizer.t == 3 * N_BATCHES
    assert resumed.epoch == 3


def test_snapshot_interval_and_extra_arrays(tmp_path):
    snap = tmp_path / "s.npz"
    run, model, rng = make(snap, interval=2)
    saved = []
    real_save = run.save
    run.save = lambda extra=None: (saved.append(run.epoch), real_save(extra))
    train(run, model, rng, 5, [])
    assert saved == [2, 4, 5]  # every 2 epochs, and after the last
    run.save(extra={"perm": np.arange(4)})
    again, _, _ = make(snap, resume=True)
    np.testing.assert_array_equal(again.restore()["perm"], np.arange(4))
    assert (again.epoch, again.iteration, again.partial) == (5, 0, None)
    assert run.sidecar(epochs=5) == {"config": {"n_in": 3}, "epochs": 5}


def test_nan_guard_names_the_batch(tmp_path):
    run, _, _ = make(tmp_path / "n.npz")
    run.epoch, run.iteration = 2, 4
    with pytest.raises(
        training.NonFiniteLoss, match="at epoch 3, batch 5; no snapshot was written"
    ):
        run.check_loss(float("nan"), "the loss")


def test_epoch_means_carry_over_a_resume():
    a = training.EpochMeans(["loss", "kl"])
    a.add({"v/loss": 2.0, "v/kl": 1.0}, 3, prefix="v/")
    b = training.EpochMeans(["loss", "kl"], partial=a.state())
    b.add({"loss": 4.0, "kl": 0.0}, 1)
    assert b.count == 4 and b.means("train_") == {"train_loss": 10 / 4, "train_kl": 3 / 4}
