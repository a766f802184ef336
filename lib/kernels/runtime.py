"""Process-wide speed settings, applied once when `lib` is first imported.

Every script imports `lib` before NumPy, so these settings hold for every step
of the pipeline without relying on the user's shell. A variable the user has
already set is left alone. Importing this module is cheap: it sets a few
environment variables and makes two `mallopt` calls.

- Threads. numba and OpenBLAS each keep their own threads; on a 2-core machine
  they fight. numba runs single-threaded (`NUMBA_NUM_THREADS=1`): where a
  kernel is worth splitting, `lib.kernels.fastconv` splits it over plain Python
  threads instead (its kernels release the GIL). OpenMP threads sleep instead
  of spinning when idle (`OMP_WAIT_POLICY=PASSIVE`), and so do OpenBLAS's
  (`OPENBLAS_THREAD_TIMEOUT=4`: after a GEMM its workers otherwise spin for
  about 2**28 cycles, a tenth of a second, on the cores the next kernel needs).
  OpenBLAS reads that variable when NumPy loads it, so it only takes effect if
  `lib` is imported before NumPy; `blas_threads_sleep()` says whether it did,
  and `kernel_threads()` falls back to one thread when it did not.
- Allocation. glibc serves large blocks with mmap and returns them on free, so
  each training step paid page faults to zero tens of MB of fresh pages for
  its column buffers (about 2,400 faults a VAE step). With mmap off for
  malloc (`M_MMAP_MAX=0`; `np.memmap` is unaffected) and a high trim
  threshold, those blocks stay on the heap and are reused: no faults after
  the first step. The cost: memory freed below the top of the heap is kept
  by the process, so its RSS stays near its peak.
"""

import ctypes
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import ThreadpoolController  # loads no BLAS itself: safe before NumPy

_DEFAULTS = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "NUMBA_NUM_THREADS": "1",
    "OPENBLAS_THREAD_TIMEOUT": "4",
}

# mallopt parameters (glibc <malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 512 << 20  # bytes of free heap top kept before returning it

_state = {"blas_sleeps": None, "kernel_threads": None, "blas": None}
_pool = {
    "pid": None,
    "executor": None,
    "size": 0,
}  # threads of `parallel_ranges`, made on first use


def apply() -> None:
    """Set the process-wide defaults above (idempotent)."""
    if _state["blas_sleeps"] is None:
        # Before NumPy is imported OpenBLAS has not read its environment yet.
        _state["blas_sleeps"] = "numpy" not in sys.modules or (
            os.environ.get("OPENBLAS_THREAD_TIMEOUT") is not None
        )
        if not _state["blas_sleeps"]:
            warnings.warn(
                "lib was imported after NumPy, so OpenBLAS's idle threads spin and lib's "
                "kernels run on one thread (same results, slower): import lib first",
                RuntimeWarning,
                stacklevel=2,
            )
        _tune_malloc()
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)


def _tune_malloc() -> None:
    """Keep large blocks on the heap (glibc only; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return
    mallopt(_M_MMAP_MAX, 0)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def blas_threads_sleep() -> bool:
    """Whether OpenBLAS's idle threads sleep (lib was imported before NumPy)."""
    return bool(_state["blas_sleeps"])


def kernel_threads() -> int:
    """Threads for the GIL-free kernels of `lib.kernels.fastconv`.

    One per available core, capped by `OPENBLAS_NUM_THREADS` (or
    `OMP_NUM_THREADS`) when set, so a worker process given one BLAS thread
    also gets one kernel thread; 1 when OpenBLAS's idle threads spin (they
    would take the cores from the kernel's threads).
    """
    if _state["kernel_threads"] is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        limit = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
        if limit and limit.strip().isdigit():
            cores = min(cores, max(1, int(limit)))
        _state["kernel_threads"] = cores if blas_threads_sleep() else 1
    return _state["kernel_threads"]


def single_blas_thread():
    """Context manager: BLAS runs on the calling thread only, then as before.

    For code that splits work over its own threads, each calling GEMMs on a
    part (`lib.kernels.fast_encoder`): one BLAS thread per caller, so the callers do
    not fight over the cores. The BLAS libraries are looked up once.
    """
    if _state["blas"] is None:
        _state["blas"] = ThreadpoolController().select(user_api="blas")
    return _state["blas"].limit(limits=1)


def parallel_ranges(fn, n, threads=None):
    """Runs `fn(lo, hi)` over contiguous parts of `range(n)`, one per thread.

    For GIL-free kernels (numba `nogil`, NumPy copies, `lib.kernels.blas`), where
    plain Python threads are enough. `threads` defaults to `kernel_threads()`;
    part i is `[n * i // k, n * (i + 1) // k)` with k = min(n, threads), and
    the calling thread takes the first part.
    """
    k = min(n, kernel_threads() if threads is None else max(1, int(threads)))
    if k <= 1:
        fn(0, n)
        return
    pool = _pool["executor"]
    if _pool["pid"] != os.getpid() or _pool["size"] < k - 1:
        # A forked child inherits the pool object but not its threads.
        pool = ThreadPoolExecutor(max_workers=k - 1, thread_name_prefix="lib")
        _pool.update(executor=pool, pid=os.getpid(), size=k - 1)
    bounds = [n * i // k for i in range(k + 1)]
    futures = [pool.submit(fn, bounds[i], bounds[i + 1]) for i in range(1, k)]
    fn(bounds[0], bounds[1])
    for future in futures:
        future.result()


apply()
