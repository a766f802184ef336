"""Process-wide speed settings, applied once when `lib` is first imported.

Every script imports `lib` before numpy does any work, so these settings hold for
every step of the pipeline without relying on the user's shell. A variable the
user has already set is left alone.

- numba and OpenBLAS each start their own thread pool; on a 2-core machine the
  two pools fight. numba kernels here are written single-threaded (the batch is
  the parallelism), and OpenMP threads sleep instead of spinning when idle.
"""

import os

_DEFAULTS = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "NUMBA_NUM_THREADS": "1",
}


def apply() -> None:
    """Set the process-wide defaults above (idempotent)."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)


apply()
