"""Live training curves: TensorBoard event files written as a run trains, and read back.

03, 04, 07 and the look-ahead trainer write, under `<data-dir>/runs/<run name>/`:
- every numeric column of their CSV log, one point per epoch or generation, tagged
  `<run>/<column>` (`vae/train_loss`, `rnn_dream/test_nll`, `controller/sigma`, ...),
  with the log's counter (epoch, generation) as the step (`training.CsvLog` mirrors its
  rows here), so TensorBoard shows each model's curves in a section of their own;
- every batch's training losses (`<run>/batch/<loss>`, step = batches so far, in the
  sub-folder `batches/`), so a long epoch shows progress before it ends;
- pictures: V's reconstructions every epoch (03), M's open-loop dream beside the real
  frames every epoch (04).

Watch them with `tensorboard --logdir data/runs` (TensorBoard is a separate install:
`pip install tensorboard`); the files are written by tensorboardX, which needs only
NumPy and protobuf.

Resuming: a resumed run's writer starts with a purge step (the first epoch or batch
still to do), so TensorBoard drops the points an interrupted run wrote after its
snapshot, and the curves match the CSV. A new run (--overwrite) deletes the folder's
old event files first.

`read_events` parses the files back (the TFRecord framing and tensorboardX's protobuf
`Event`), for tests and for scripts that want the numbers without TensorBoard.
"""

from __future__ import annotations

import glob
import itertools
import numbers
import os
import struct

import numpy as np

RUNS = "runs"  # <data-dir>/runs/<run name>/: one folder of event files a run
_WRITERS = itertools.count()  # this process's event logs, for unique file names
BATCHES = "batches"  # the run's sub-folder of `batch/<loss>` series


def run_dir(data_dir: str, name: str) -> str:
    """The folder of run `name`'s event files (`<data-dir>/runs/<name>`)."""
    return os.path.join(data_dir, RUNS, name)


class EventLog:
    """A run's TensorBoard event files (see the module docstring).

    Args:
        logdir: the run's folder (`run_dir`); made if missing.
        resume_step: for a resumed run, the first step (epoch) still to come: points at
            or after it from earlier sessions are dropped by TensorBoard. None: a new
            run, whose folder's old event files are deleted.
        resume_batch: the same for the `batch/` series (batches done before it).
    """

    def __init__(self, logdir: str, resume_step: int | None = None, resume_batch: int = 0):
        from tensorboardX import SummaryWriter  # only runs that log need it

        self.logdir = logdir
        self.prefix = os.path.basename(os.path.normpath(logdir))  # the run's name
        batches = os.path.join(logdir, BATCHES)
        os.makedirs(logdir, exist_ok=True)
        for folder in (logdir, batches):
            if resume_step is None:
                for old in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
                    os.remove(old)
        # purge_step: TensorBoard discards the points at or after it that an interrupted
        # session wrote. The batch series count batches, not epochs, so they live in a
        # folder (a TensorBoard run) of their own, with their own purge step. The pid and
        # a count in the name keep two sessions in one second from writing one file.
        resumed = resume_step is not None
        self._suffix = f".{os.getpid()}.{next(_WRITERS)}"
        self._writer = SummaryWriter(
            logdir, purge_step=int(resume_step) if resumed else None, flush_secs=10,
            filename_suffix=self._suffix,
        )  # fmt: skip
        self._batches = None  # made by the first `batch` call: runs without them have none
        self._batches_dir = batches
        self._batches_purge = int(resume_batch) if resumed else None

    def scalars(self, row: dict, step: int, skip: tuple = ()) -> None:
        """Every finite number in `row` (a CSV log's row) as a point at `step`; other
        values (text, blanks) and the keys in `skip` are left out."""
        for key, value in row.items():
            if key in skip or isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            if np.isfinite(value):
                self._writer.add_scalar(f"{self.prefix}/{key}", float(value), int(step))
        self._writer.flush()

    def batch(self, losses: dict, batches_done: int) -> None:
        """One batch's losses at `batches_done`, as `<run>/batch/<name>` (a point costs
        microseconds; TensorBoard thins long series for display)."""
        if self._batches is None:
            from tensorboardX import SummaryWriter

            self._batches = SummaryWriter(
                self._batches_dir, purge_step=self._batches_purge, flush_secs=10,
                filename_suffix=self._suffix,
            )  # fmt: skip
        for key, value in losses.items():
            self._batches.add_scalar(f"{self.prefix}/batch/{key}", float(value), int(batches_done))

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An (H, W, 3) uint8 picture at `step`, as `<run>/<tag>`."""
        self._writer.add_image(
            f"{self.prefix}/{tag}", np.asarray(image, np.uint8), int(step), dataformats="HWC"
        )
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
        if self._batches is not None:
            self._batches.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def read_events(logdir: str) -> dict:
    """The points of the event files in `logdir` (not its sub-folders), oldest session
    first, as TensorBoard
    would show them: {"scalars": {tag: [(step, value), ...]}, "images": {tag: [step,
    ...]}}, each series in the order written, with a purge (a resumed run's first
    event) dropping the earlier points at or after its step.

    Raises:
        ValueError: a file is not a TFRecord of events (truncated, or another format).
    """
    from tensorboardX.proto import event_pb2

    scalars: dict = {}
    images: dict = {}
    files = []
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        events = [event_pb2.Event.FromString(r) for r in _records(path)]
        files.append((events[0].wall_time if events else 0.0, path, events))
    for _, _, events in sorted(files):
        for event in events:
            if event.HasField("session_log") and event.session_log.status == 1:  # START
                for series in scalars.values():
                    series[:] = [(s, v) for s, v in series if s < event.step]
                for steps in images.values():
                    steps[:] = [s for s in steps if s < event.step]
            for value in event.summary.value:
                if value.HasField("image"):
                    images.setdefault(value.tag, []).append(event.step)
                elif value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return {"scalars": scalars, "images": images}


def _records(path: str):
    """The payloads of a TFRecord file (length, its CRC, data, its CRC; CRCs unchecked)."""
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at < len(data):
        if at + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {at}")
        (length,) = struct.unpack("<Q", data[at : at + 8])
        start, end = at + 12, at + 12 + length
        if end + 4 > len(data):
            raise ValueError(f"{path}: truncated record at byte {at}")
        yield data[start:end]
        at = end + 4
