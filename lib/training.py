"""What V's and M's training scripts share: exact-resume snapshots, the
resume/overwrite rules, the deferred Ctrl-C, the epoch's running means, the CSV
log and its plot, and the guard against NaN losses. `lib/checkpointer.py` puts
them together as one run object.

A training snapshot is one `.npz` (no pickles) holding the model under
`model/`, the optimizer under `optimizer/` (Chainer's own serializers), any
extra arrays (for example the epoch's shuffled order) under `extra/`, and a JSON
`state` string (epoch, iteration, RNG states) — everything `--resume` needs to
continue exactly where the run stopped.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import threading

import chainer
import numpy as np

from lib import drawing, manifest
from lib.fileio import atomic_path


class NonFiniteLoss(FloatingPointError):
    """A loss became NaN or infinite."""


class RunConflict(ValueError):
    """--resume without a snapshot, or a new run over an existing one without --overwrite."""


class Stopped(Exception):
    """A run stopped on purpose after saving its snapshot; the message says where and
    how to continue.

    Attributes:
        code: the exit status a script should give: 130 after Ctrl-C, 0 after the
            `--max-iterations` budget.
    """

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def check_run(
    snapshot_path: str, resume: bool, overwrite: bool, start: str = "to start training"
) -> None:
    """The resume/overwrite rules of a training run, before anything is written.

    Args:
        start: the end of the hint "run without --resume ..." when there is no snapshot.

    Raises:
        RunConflict: `resume` and no snapshot, or a snapshot and neither flag.
    """
    if resume and not os.path.exists(snapshot_path):
        raise RunConflict(f"--resume: {snapshot_path} not found — run without --resume {start}")
    if not resume and not overwrite and os.path.exists(snapshot_path):
        raise RunConflict(
            f"{snapshot_path} exists: pass --resume to continue that run, or --overwrite to start again"
        )


def check_loss(value: float, what: str, epoch: int, batch: int, snapshot_path: str) -> float:
    """The NaN guard: `value` if finite.

    Raises:
        NonFiniteLoss: its message says where (1-based epoch and batch), whether the
            last good snapshot at `snapshot_path` is kept, and what to try.
    """
    if math.isfinite(value):
        return value
    kept = (
        f"the last good snapshot {snapshot_path} is kept"
        if os.path.exists(snapshot_path)
        else "no snapshot was written"
    )
    raise NonFiniteLoss(
        f"{what} is {value} at epoch {epoch}, batch {batch}; {kept} — try a lower --lr"
    )


def rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state


def save_snapshot(
    path: str, model, optimizer, state: dict, extra: dict | None = None, sidecar: dict | None = None
) -> None:
    """Writes model + optimizer + `state` (JSON-able) + `extra` arrays, atomically, and
    `sidecar` (the run's settings, JSON) beside it when given."""
    target: dict = {}
    ser = chainer.serializers.DictionarySerializer(target)
    ser["model"].save(model)
    ser["optimizer"].save(optimizer)
    for key, value in (extra or {}).items():
        target[f"extra/{key}"] = np.asarray(value)
    target["state"] = np.array(json.dumps(state))
    with atomic_path(path) as tmp:
        np.savez(tmp, **{k: chainer.backend.CpuDevice().send(v) for k, v in target.items()})
    if sidecar is not None:
        manifest.write_json(sidecar_path(path), sidecar)


def load_snapshot(path: str, model, optimizer) -> tuple[dict, dict]:
    """Restores model and optimizer from `path`; returns (state, extra arrays).

    Raises:
        ValueError: if the file is unreadable or holds a model of another size.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            chainer.serializers.NpzDeserializer(npz, path="model/").load(model)
            chainer.serializers.NpzDeserializer(npz, path="optimizer/").load(optimizer)
            state = json.loads(str(npz["state"]))
            extra = {k[len("extra/") :]: npz[k] for k in npz.files if k.startswith("extra/")}
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ValueError(
            f"{path}: cannot resume from this snapshot ({type(e).__name__}: {e})"
        ) from None
    return state, extra


def save_model(path: str, model, sidecar: dict) -> None:
    """The final model: Chainer `save_npz` weights + a JSON sidecar beside them
    (`<path without .npz>.json`) with what is needed to rebuild it. Uncompressed, as
    the snapshots are: zlib took 0.8 s per save of V's 16 MB to save 7 % of it."""
    with atomic_path(path) as tmp:
        chainer.serializers.save_npz(tmp, model, compression=False)
    with atomic_path(sidecar_path(path)) as tmp, open(tmp, "w") as f:
        json.dump(sidecar, f, indent=2, sort_keys=True)
        f.write("\n")


def sidecar_path(model_path: str) -> str:
    return os.path.splitext(model_path)[0] + ".json"


def data_line(train: str, test: str | None, without_test: str) -> str:
    """The line a trainer prints about its data: `train`, then `test`, or, when there is
    no test split, what the run goes without (`without_test`)."""
    return f"train: {train}; " + (f"test: {test}" if test else f"no test split: {without_test}")


class EpochMeans:
    """An epoch's running means of reported losses, weighted by batch size, whose
    state (`{"sums", "count"}`, JSON) a mid-epoch snapshot carries to the resumed run.

    Args:
        keys: the losses, in the order the log lists them.
        partial: `state()` of the interrupted epoch, or None to start at zero.
    """

    def __init__(self, keys, partial: dict | None = None):
        self.sums = dict(partial["sums"]) if partial else dict.fromkeys(keys, 0.0)
        self.count = partial["count"] if partial else 0
        self._mark = (dict(self.sums), self.count)  # where `since_last` starts

    def add(self, reported: dict, n, prefix: str = "") -> None:
        """Adds a batch of weight `n` (frames, steps): `reported[prefix + key]` for each
        key, a float or a Chainer Variable (as `chainer.Reporter` observes it)."""
        for k in self.sums:
            value = reported[prefix + k]
            self.sums[k] += float(getattr(value, "array", value)) * n
        self.count += n

    def mean(self, key: str) -> float:
        return self.sums[key] / max(self.count, 1)

    def means(self, prefix: str = "") -> dict:
        """{prefix + key: mean}."""
        return {prefix + k: self.mean(k) for k in self.sums}

    def state(self) -> dict:
        return {"sums": self.sums, "count": self.count}

    def since_last(self) -> dict:
        """The means of what was added since the last call (or the start): one batch's
        losses, for its point in TensorBoard."""
        sums, count = self._mark
        n = self.count - count
        out = {k: (self.sums[k] - sums[k]) / n if n else 0.0 for k in self.sums}
        self._mark = (dict(self.sums), self.count)
        return out


class CsvLog:
    """An append-only CSV of one row per epoch, safe to resume.

    Args:
        path: the CSV file.
        fields: column names; the first is the counter (epoch, generation).
        resume_epoch: on resume, rows whose counter is > this are dropped (they came
            after the snapshot being resumed); None starts a new file.
        events: a `lib.tensorboard_log.EventLog` that mirrors every row, or None.
    """

    def __init__(self, path: str, fields: list[str], resume_epoch: int | None = None, events=None):
        self.path = path
        self.fields = fields
        self.events = events
        rows = []
        if resume_epoch is not None and os.path.exists(path):
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r[fields[0]]) <= resume_epoch]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fields)
            w.writeheader()
            w.writerows({k: r.get(k, "") for k in fields} for r in rows)

    def append(self, row: dict) -> None:
        """Writes `row` (and, with `events`, its numbers as TensorBoard points at the
        row's counter)."""
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
        if self.events is not None:
            counter = self.fields[0]
            self.events.scalars(row, row[counter], skip=(counter,))

    def read(self) -> list[dict]:
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))


def plot_curves(
    log: CsvLog, png: str, series: list[tuple[str, str]], title: str, ylabel: str = "loss"
) -> None:
    """Line plot of CSV columns against epoch.

    Args:
        series: (column, label) pairs; missing or empty columns are skipped.
    """
    plt = drawing.pyplot()
    rows = log.read()
    if not rows:
        return
    epochs = [int(r[log.fields[0]]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for column, label in series:
        ys = np.array(
            [float(r[column]) if r.get(column) not in (None, "") else np.nan for r in rows]
        )
        keep = ~np.isnan(ys)
        if keep.any():
            # Sparse series (an evaluation every k epochs) are drawn point to point.
            xs = np.asarray(epochs)[keep]
            marker = "o" if keep.sum() < 30 or keep.sum() < len(ys) else None
            ax.plot(xs, ys[keep], marker=marker, label=label)
    ax.set_xlabel(log.fields[0])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


class DeferredInterrupt:
    """Turns the first Ctrl-C into a flag checked between iterations, so a
    snapshot is never taken halfway through an optimizer update, and counts
    iterations against an optional budget (`--max-iterations`). A second
    Ctrl-C interrupts at once.

    Use::

        with DeferredInterrupt(max_iterations) as stop:
            for ...:
                step()
                stop.count()
                if stop.requested_now:
                    save()
                    stop.stop(snapshot_path, "epoch 3, batch 7")  # raises Stopped
    """

    def __init__(self, max_iterations: int | None = None):
        self.requested = False
        self.max_iterations = max_iterations
        self.done = 0
        self._previous = None

    def count(self) -> None:
        """Records one finished iteration."""
        self.done += 1

    @property
    def requested_now(self) -> bool:
        """Ctrl-C was pressed or the iteration budget is spent."""
        return self.requested or (
            self.max_iterations is not None and self.done >= self.max_iterations
        )

    def snapshot_if_due(self, epoch: int, epochs: int, interval: int, save) -> bool:
        """After an epoch: calls `save()` every `interval` epochs, after the last one,
        and when the run is about to stop (Ctrl-C or the budget). Returns whether it did."""
        due = epoch % interval == 0 or epoch == epochs or self.requested_now
        if due:
            save()
        return due

    def stop_if_requested(self, snapshot_path: str, where: str) -> None:
        """`stop` if Ctrl-C was pressed or the budget is spent; otherwise nothing."""
        if self.requested_now:
            self.stop(snapshot_path, where)

    def raise_if_interrupted(self, message: str = "interrupted") -> None:
        """Raises `Stopped` (code 130) with `message` if Ctrl-C was pressed: for a loop
        with nothing to save mid-way (the iteration budget aside); `message` says what
        is kept, or the caller does."""
        if self.requested:
            raise Stopped(message, 130)

    def checking(self, bar, message: str = "interrupted") -> _CheckingProgress:
        """`bar` (a tqdm-like progress bar) whose `update` also calls
        `raise_if_interrupted(message)`: a run of episodes then stops after the one under
        way."""
        return _CheckingProgress(bar, self, message)

    def stop(self, snapshot_path: str, where: str):
        """Raises `Stopped` saying what was saved: code 130 after Ctrl-C, 0 after the budget."""
        why = "interrupted" if self.requested else f"stopped after {self.done} batches"
        raise Stopped(
            f"{why}: saved {snapshot_path} ({where}) — continue with --resume",
            130 if self.requested else 0,
        )

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\ninterrupt: finishing this step and saving a snapshot (Ctrl-C again to abort)",
            flush=True,
        )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


class _CheckingProgress:
    """See `DeferredInterrupt.checking`."""

    def __init__(self, bar, interrupt: DeferredInterrupt, message: str):
        self.bar, self.interrupt, self.message = bar, interrupt, message

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.interrupt.raise_if_interrupted(self.message)
