"""JSON manifests that travel with every output folder and model.

A manifest records the script, its arguments, the seed, the environment's
configuration and the library versions, so a later step can check that what
it reads is compatible and say so in one line if not.
"""

from __future__ import annotations

import datetime
import json
import os
import platform

import gymnasium
import numba
import numpy

from lib.fileio import atomic_path


def versions() -> dict:
    """Versions of the libraries that shape the results."""

    out = {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "gymnasium": gymnasium.__version__,
    }
    try:
        import chainer  # here: 01 and 02 write manifests without paying Chainer's start-up

        out["chainer"] = chainer.__version__
    except ImportError:
        pass
    return out


def make(script: str, args: dict, **extra) -> dict:
    """A manifest dict for `script` run with `args` (a dict of flags)."""
    out = {
        "script": script,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "args": args,
        "versions": versions(),
    }
    out.update(extra)
    return out


def write_json(path: str, data: dict) -> None:
    """Writes `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def write_report(path: str, data: dict, table: str) -> str:
    """A results report: `data` as JSON at `path` and the Markdown `table` beside it
    (same name, `.md`), each written atomically. Returns the path without its ending,
    for the script's picture beside them."""
    write_json(path, data)
    stem = os.path.splitext(path)[0]
    with atomic_path(stem + ".md") as tmp, open(tmp, "w") as f:
        f.write(table + "\n")
    return stem


def read_json(path: str) -> dict | None:
    """The JSON object at `path`, or None if there is none (or it is unreadable)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
