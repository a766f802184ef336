"""Files: atomic writes (a reader never sees half a file, and an interrupted write
leaves at most a `.tmp_*` file that the next run removes) and content hashes (which
model a model was trained with)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile


def file_hash(path: str) -> str:
    """The first 12 hex digits of the file's SHA-1."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path beside `path`; renames it onto `path` on success.

    The temporary file keeps `path`'s extension (some writers pick the format
    from it) and gets the usual permissions (mkstemp's are 0600).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=os.path.splitext(path)[1], dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
