"""Frames for V: a uint8 `.npy` cache built once from rollout files, read
through a memory map.

`build_cache` decompresses each rollout's `obs` once into one
(N, 64, 64, 3) uint8 `.npy` file, one rollout at a time, so memory does not grow
with the number of rollouts. `FrameStore` reads batches from that file through
a read-only memory map and periodically tells the kernel it may drop the pages
it touched (they stay in the page cache), so the process's resident memory stays
flat even when the cache is larger than RAM.

The cache sits beside the data (`<split>/../cache/<split>_<key>.npy`, with a
JSON index); `key` hashes the list of files used (names, sizes, mtimes), so the
cache is rebuilt exactly when the selection of rollouts changes.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import zipfile

import numpy as np

from lib.fileio import atomic_path
from lib.env.rollouts import BadRolloutError, list_rollouts


class NoFramesError(ValueError):
    """No usable rollout file in the folder."""


def _obs_shape(path: str) -> tuple:
    """Shape of `obs` in a rollout file, read from the npy header only."""
    try:
        with zipfile.ZipFile(path) as z, z.open("obs.npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise BadRolloutError(f"{path}: unreadable ({type(e).__name__})") from None
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or shape[0] < 2:
        raise BadRolloutError(f"{path}: obs is {shape} {dtype}, expected (T+1, S, S, 3) uint8")
    return shape


def selection_key(files: list[str]) -> str:
    h = hashlib.sha1()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.basename(f)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:12]


def build_cache(
    split_dir: str, max_rollouts: int | None = None, image_size: int = 64, progress=None
) -> tuple[str, dict]:
    """Builds (or reuses) the frame cache of a split.

    Args:
        split_dir: folder of rollout files, e.g. data/vae_data/train.
        max_rollouts: use only the first this many files (sorted by name).
        image_size: expected frame side; other sizes are counted as bad.
        progress: optional callable(done, total) for a progress display.

    Returns:
        (path of the .npy cache, index dict with `frames`, `rollouts`,
        `skipped` (list of "file: reason"), `key`, and `teacher`: the path of the
        (frames, 2) float32 `.npy` of the frames' teacher labels when every used file
        has them (01 `--labels`; a rollout's last frame, which has none, is NaN),
        else None).

    Raises:
        NoFramesError: if no file is usable.
    """
    files = list_rollouts(split_dir)
    if max_rollouts is not None:
        files = files[:max_rollouts]
    if not files:
        raise NoFramesError(f"no rollout files in {split_dir}")
    key = selection_key(files)
    split = os.path.basename(os.path.normpath(split_dir))
    cache_dir = os.path.join(os.path.dirname(os.path.normpath(split_dir)), "cache")
    npy = os.path.join(cache_dir, f"{split}_{key}.npy")
    index_path = npy[:-4] + ".json"
    if os.path.exists(npy) and os.path.exists(index_path):
        with open(index_path) as f:
            return npy, json.load(f)

    # Pass 1: shapes from headers (cheap), so the output can be sized up front.
    good, skipped, total = [], [], 0
    for path in files:
        try:
            shape = _obs_shape(path)
            if shape[1:3] != (image_size, image_size):
                raise BadRolloutError(f"{path}: frames are {shape[1]}x{shape[2]}, not {image_size}")
        except BadRolloutError as e:
            skipped.append(str(e))
            continue
        good.append((path, shape[0]))
        total += shape[0]
    if not good:
        raise NoFramesError(f"no usable rollout files in {split_dir} ({len(skipped)} bad)")

    # Pass 2: one rollout at a time, appended with plain writes (not through a
    # memory map: dirty mapped pages would count as this process's memory).
    os.makedirs(cache_dir, exist_ok=True)
    written = 0
    used = 0
    labels = []  # per used file, (n, 2) float32; None once a file has none
    with atomic_path(npy) as tmp, open(tmp, "wb") as f:
        _write_npy_header(f, total, image_size)
        for k, (path, n) in enumerate(good):
            try:
                with np.load(path, allow_pickle=False) as z:
                    obs = z["obs"]
                    told = z["teacher"] if "teacher" in z.files else None
                if obs.shape[0] != n:
                    raise BadRolloutError(f"{path}: has {obs.shape[0]} frames, header said {n}")
                if told is not None and told.shape != (n - 1, 2):
                    raise BadRolloutError(f"{path}: teacher is {told.shape}, expected ({n - 1}, 2)")
            except (BadRolloutError, OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                skipped.append(f"{path}: unreadable ({type(e).__name__})")
                continue
            f.write(np.ascontiguousarray(obs, np.uint8).tobytes())
            if labels is not None:
                labels = None if told is None else [*labels, _frame_labels(told)]
            written += n
            used += 1
            if progress is not None:
                progress(k + 1, len(good))
        if written < total:  # some files failed in pass 2: fix the header's shape
            f.truncate(f.tell())
            f.seek(0)
            _write_npy_header(f, written, image_size)
    teacher = None
    if labels:
        teacher = npy[:-4] + "_teacher.npy"
        with atomic_path(teacher) as tmp, open(tmp, "wb") as f:
            np.save(f, np.concatenate(labels))
    index = {
        "frames": written,
        "rollouts": used,
        "skipped": skipped,
        "key": key,
        "split_dir": split_dir,
        "teacher": teacher,
    }
    with atomic_path(index_path) as tmp, open(tmp, "w") as f:
        json.dump(index, f, indent=1)
    return npy, index


def _frame_labels(told: np.ndarray) -> np.ndarray:
    """A rollout's per-frame labels: the teacher's action at each of its T + 1
    frames, NaN for the last (the episode ended there: no action was asked)."""
    out = np.full((len(told) + 1, 2), np.nan, np.float32)
    out[:-1] = told
    return out


def _write_npy_header(f, frames: int, image_size: int) -> None:
    """Writes a .npy v1 header for (frames, S, S, 3) uint8, padded to a fixed
    256 bytes so it can be rewritten in place with another frame count."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (frames, image_size, image_size, 3)}
    text = repr(header).encode("latin1")
    text = text + b" " * (256 - 10 - len(text) - 1) + b"\n"
    f.write(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text)


class FrameStore:
    """Random-access batches of frames from a `.npy` cache, via a memory map.

    Args:
        path: the cache written by `build_cache`.
        teacher: its teacher labels' `.npy` (`build_cache`'s index["teacher"]), or None.
        release_every: after this many batches, advise the kernel to drop the
            mapped pages from this process (they stay in the page cache). Random
            reads map far more than they touch (the kernel maps pages around
            each fault, ~50 MB a batch of 100 measured here), so the default is
            every batch; it costs about 0.5 ms.
    """

    def __init__(self, path: str, teacher: str | None = None, release_every: int = 1):
        self.frames = np.load(path, mmap_mode="r")
        self.teacher = None if teacher is None else np.load(teacher)
        if self.teacher is not None and self.teacher.shape != (len(self.frames), 2):
            raise ValueError(f"{teacher}: {self.teacher.shape} labels for {len(self.frames)} frames")
        self.release_every = release_every
        self._reads = 0

    def __len__(self) -> int:
        return len(self.frames)

    def batch(self, indices: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 copy of the frames at `indices` (read in sorted
        order, returned in the given order)."""
        indices = np.asarray(indices)
        order = np.argsort(indices, kind="stable")
        out = np.empty((len(indices), *self.frames.shape[1:]), np.uint8)
        out[order] = self.frames[indices[order]]
        self._reads += 1
        if self._reads % self.release_every == 0:
            self.release()
        return out

    def labels(self, indices: np.ndarray) -> np.ndarray:
        """(B, 2) float32 teacher labels of the frames at `indices` (NaN: none).

        Raises:
            ValueError: the frames have no labels.
        """
        if self.teacher is None:
            raise ValueError("these frames have no teacher labels (01_generate_vae_data.py --labels)")
        return self.teacher[np.asarray(indices)]

    def release(self) -> None:
        """Drops this process's mapped pages (resident memory goes back down)."""
        mm = getattr(self.frames, "_mmap", None)
        if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)
