"""The run object of a training script (03, 04, 07b_train_lookahead.py): what a run may
start from, its exact-resume snapshots, when it saves them, how it stops, and its
TensorBoard events (`event_log`).

- Start: a new run refuses to replace a snapshot without `--overwrite`, and
  `--resume` needs one (`RunConflict`, raised on construction, before anything is
  written).
- Snapshots (`lib/training.py`'s format): model, optimizer, the epoch and batch
  reached, the epoch's partial sums, the named NumPy generators' states, and any
  arrays the script adds (03's shuffled order); a JSON sidecar beside it holds the
  run's settings. `restore` puts all of it back, so a resumed run computes what an
  uninterrupted one would have.
- When: after every `interval` epochs and after the last one; mid-epoch when Ctrl-C
  is pressed or the `--max-iterations` budget is spent, after the batch in hand
  (`training.DeferredInterrupt`), and then `training.Stopped` is raised.

Use::

    run = Checkpointer.from_args(snapshot_path, args)  # RunConflict
    run.track(model, optimizer, rngs={"shuffle_rng": rng}, settings={"config": ...})
    if args.resume:
        extra = run.restore()
    with run.ending(events), run:  # Ctrl-C now finishes the batch in hand
        for epoch in run.epochs(args.epochs):  # 0-based, from where the snapshot stopped
            with run.batches(n_batches, f"epoch {epoch + 1}") as bar:
                for it in bar:
                    loss = ...
                    run.check_loss(float(loss.array), "the loss")  # NonFiniteLoss
                    ...  # backward, update
                    run.batch_done(partial)  # Stopped, after a mid-epoch snapshot
            training.save_model(path, model, run.sidecar(epochs=epoch + 1))
        # leaving each epoch: the snapshot if one is due, then Stopped if asked

Around the loop, `with run.ending(events):` turns `training.NonFiniteLoss` and
`training.Stopped` (or a second Ctrl-C) into the script's one-line exit, and closes
the event log either way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np

from lib import cli, manifest, progress, training


class Checkpointer:
    """A training run's position (epoch, batch, partial sums) and its snapshot.

    Args:
        path: the snapshot `.npz` (its sidecar is `training.sidecar_path(path)`).
        resume, overwrite: the `--resume` / `--overwrite` flags.
        interval: epochs between snapshots (`--snapshot-interval`).
        max_iterations: batches this session may run (`--max-iterations`), or None.

    Raises:
        training.RunConflict: `resume` without a snapshot, or a snapshot and neither flag.
    """

    def __init__(
        self,
        path: str,
        resume: bool = False,
        overwrite: bool = False,
        interval: int = 1,
        max_iterations: int | None = None,
    ):
        training.check_run(path, resume, overwrite)
        self.path = path
        self.interval = interval
        self.max_iterations = max_iterations
        self.epoch = 0  # epochs finished
        self.iteration = 0  # batches finished in the current epoch
        self.partial = None  # the current epoch's sums so far, when resumed mid-epoch
        self.model = self.optimizer = None
        self.rngs: dict[str, np.random.Generator] = {}
        self.settings: dict = {}
        self._interrupt: training.DeferredInterrupt | None = None
        self._batches = 0
        self.restored = False

    @classmethod
    def from_args(cls, path: str, args) -> Checkpointer:
        """From the flags of `cli.add_run_args`."""
        return cls(path, args.resume, args.overwrite, args.snapshot_interval, args.max_iterations)

    def track(self, model, optimizer, rngs: dict | None = None, settings: dict | None = None):
        """What snapshots hold: `model`, `optimizer`, the generators `rngs` (by the names
        their states are saved under) and `settings`, the sidecar's fields."""
        self.model, self.optimizer = model, optimizer
        self.rngs = dict(rngs or {})
        self.settings = dict(settings or {})

    def saved_settings(self) -> dict:
        """The sidecar of the snapshot on disk ({} if there is none)."""
        return manifest.read_json(training.sidecar_path(self.path)) or {}

    def restore(self) -> dict:
        """Loads the snapshot into the tracked model, optimizer and generators, and the
        run's position; returns the extra arrays saved with it.

        Raises:
            ValueError: the file is unreadable or holds a model of another size.
        """
        state, extra = training.load_snapshot(self.path, self.model, self.optimizer)
        self.epoch, self.iteration = state["epoch"], state["iteration"]
        self.partial = state.get("partial")
        for name, rng in self.rngs.items():
            training.set_rng_state(rng, state[name])
        self.restored = True
        return extra

    def event_log(self, logdir: str, batches_per_epoch: int = 0):
        """The run's TensorBoard event files (`lib.tensorboard_log.EventLog`): a new
        run's replace the folder's old ones; a restored run's continue them, and the
        points an interrupted session wrote after the snapshot are dropped."""
        from lib.tensorboard_log import EventLog  # tensorboardX: only when a run logs

        if not self.restored:
            return EventLog(logdir)
        return EventLog(logdir, self.epoch + 1, self.epoch * batches_per_epoch + self.iteration + 1)

    def sidecar(self, **fields) -> dict:
        """The run's settings with `fields` added (for the model's own sidecar)."""
        return {**self.settings, **fields}

    def save(self, extra: dict | None = None) -> None:
        """Snapshots the run where it stands, with `extra` arrays."""
        state = {"epoch": self.epoch, "iteration": self.iteration, "partial": self.partial}
        state.update({name: training.rng_state(rng) for name, rng in self.rngs.items()})
        sidecar = self.sidecar(epoch=self.epoch, iteration=self.iteration)
        training.save_snapshot(self.path, self.model, self.optimizer, state, extra, sidecar)

    def __enter__(self):
        self._interrupt = training.DeferredInterrupt(self.max_iterations).__enter__()
        return self

    def __exit__(self, *exc):
        return self._interrupt.__exit__(*exc)

    @contextlib.contextmanager
    def ending(self, events, nothing_saved: str = "nothing to resume — rerun without --resume"):
        """How a training loop ends, around it: a non-finite loss exits 1 with its one
        line; a stop on purpose (Ctrl-C, --max-iterations) exits with `cli.stopped`'s
        message, and a second Ctrl-C, which left no batch to finish, with the same
        words; Ctrl-C before any snapshot exists exits 130 saying `nothing_saved`.
        `events` (the run's event log) is closed in every case."""
        try:
            yield
        except training.NonFiniteLoss as e:
            cli.fail(str(e), code=1)
        except (training.Stopped, KeyboardInterrupt) as stop:
            if not os.path.exists(self.path):
                cli.fail(f"interrupted before the first snapshot: {nothing_saved}", code=130)
            if isinstance(stop, KeyboardInterrupt):
                stop = training.Stopped(self._interrupted_message(), 130)
            cli.stopped(stop)
        finally:
            events.close()

    def epochs(self, total: int) -> Iterator[int]:
        """Yields the 0-based epochs still to train, up to `total`. After each: the
        snapshot if one is due, then `training.Stopped` if Ctrl-C or the budget asks."""
        while self.epoch < total:
            yield self.epoch
            self.epoch += 1
            self.iteration, self.partial = 0, None
            self._interrupt.snapshot_if_due(self.epoch, total, self.interval, self.save)
            self._interrupt.stop_if_requested(self.path, f"after epoch {self.epoch}")

    def checking(self, bar):
        """`bar` (a tqdm-like progress bar) whose `update` raises `training.Stopped` once
        Ctrl-C was pressed: for work with nothing to snapshot mid-way (episodes played
        between epochs), which then stops after the item in hand, saying that the last
        snapshot holds the run."""
        return self._interrupt.checking(bar, self._interrupted_message())

    def _interrupted_message(self) -> str:
        """What a Ctrl-C with no batch to finish says: the snapshot holds the run."""
        where = f"{self.epoch} epochs done" if self.epoch else "no epoch done"
        return (
            f"interrupted: {self.path} holds the run up to its last snapshot ({where}; the "
            "work under way is redone) — continue with --resume"
        )

    def batches(self, n: int, desc: str):
        """A progress bar over the epoch's batches still to run, out of `n`."""
        self._batches = n
        return progress.batches(self.iteration, n, desc)

    def check_loss(self, value: float, what: str) -> float:
        """The NaN guard (`training.check_loss`) at the current epoch and batch."""
        return training.check_loss(value, what, self.epoch + 1, self.iteration + 1, self.path)

    def batch_done(self, partial: dict | None = None, extra: dict | None = None) -> None:
        """Counts a finished batch. If Ctrl-C was pressed or the budget is spent with
        batches left in the epoch: snapshots the run with `partial` (the epoch's sums so
        far) and `extra` arrays, and raises `training.Stopped`."""
        self.iteration += 1
        self._interrupt.count()
        if self._interrupt.requested_now and self.iteration < self._batches:
            self.partial = partial
            self.save(extra)
            self._interrupt.stop(self.path, f"epoch {self.epoch + 1}, batch {self.iteration}")
