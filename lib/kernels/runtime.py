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
- How many threads (`kernel_threads()`, for the kernels and NumPy's BLAS alike):
  `--threads N` or `LIB_THREADS=N` fixes N; `OPENBLAS_NUM_THREADS` (or
  `OMP_NUM_THREADS`), as pool workers and the tests set it, fixes that number;
  otherwise ("auto", the default) it follows the machine's load. A monitor thread
  reads /proc/stat every `LOAD_PERIOD` seconds and subtracts this process's own CPU
  time: while other work at this process's priority or above keeps part of the cores
  busy, the threads drop to the cores left (at least 1), and they come back when it
  stops. Niced work (`make test` runs pytest under `nice`) gives way instead. Two jobs that each keep two
  threads on two cores collapse: OpenBLAS's threads spin waiting for a partner thread
  that the other job holds off its core, and each job kept 0.14-0.29 of its solo
  speed (docs/experiments.md); with one thread each they keep 0.6-0.8. NumPy's
  OpenBLAS takes the new count at the next safe point on the main thread
  (`follow_load()`, called between kernels), never during a GEMM. A fixed count gives
  the same bits on every run; "auto" gives today's bits on an idle machine, and under
  load OpenBLAS's one-thread sums can differ from its two-thread sums in the last bit,
  so pass `--threads` for bit-exact reruns on a shared machine.
- Allocation. glibc serves large blocks with mmap and returns them on free, so
  each training step paid page faults to zero tens of MB of fresh pages for
  its column buffers (about 2,400 faults a VAE step). With mmap off for
  malloc (`M_MMAP_MAX=0`; `np.memmap` is unaffected) and a high trim
  threshold, those blocks stay on the heap and are reused: no faults after
  the first step. The cost: memory freed below the top of the heap is kept
  by the process, so its RSS stays near its peak.
"""

import ctypes
import math
import os
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import ThreadpoolController  # loads no BLAS itself: safe before NumPy

from lib.cli import THREADS_VARIABLE  # (lib.cli imports nothing that loads NumPy)

_DEFAULTS = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "NUMBA_NUM_THREADS": "1",
    "OPENBLAS_THREAD_TIMEOUT": "4",
}

# mallopt parameters (glibc <malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 512 << 20  # bytes of free heap top kept before returning it

_state = {"blas_sleeps": None, "blas": None, "numpy_blas": None}
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


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def fixed_threads() -> int | None:
    """The thread count fixed by `LIB_THREADS` (`THREADS_VARIABLE`, set by `--threads`)
    or, failing that, by `OPENBLAS_NUM_THREADS` / `OMP_NUM_THREADS` (capped by the
    cores); None: "auto", follow the load."""
    mine = os.environ.get(THREADS_VARIABLE, "auto").strip()
    if mine.isdigit() and int(mine) >= 1:
        return int(mine)
    limit = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if limit and limit.strip().isdigit():
        return min(available_cores(), max(1, int(limit)))
    return None


def set_threads(value: str | int | None) -> None:
    """`--threads`: a whole number fixes the thread count, "auto" (or None) follows the
    load. Set in the environment, so the processes this one starts inherit it."""
    os.environ[THREADS_VARIABLE] = "auto" if value is None else str(value)
    follow_load()


def kernel_threads() -> int:
    """Threads for the GIL-free kernels (`lib.kernels.fastconv`, `fast_encoder`,
    `fast_adam`) and for NumPy's BLAS: the fixed count if there is one (see
    `fixed_threads`), else the cores the machine's other work leaves free (the load
    monitor's, see the module's docstring); 1 when OpenBLAS's idle threads spin (they
    would take the cores from the kernel's threads)."""
    if not blas_threads_sleep():
        return 1
    fixed = fixed_threads()
    if fixed is not None:
        return fixed
    return _LOAD.threads()


def follow_load() -> int:
    """A safe point (the main thread, between kernels): NumPy's BLAS takes the current
    `kernel_threads()` if it has another count. Cheap when nothing changed; returns
    the count."""
    n = kernel_threads()
    if threading.current_thread() is threading.main_thread():
        _numpy_blas_threads(n)
    return n


def _numpy_blas_threads(n: int) -> None:
    """Sets NumPy's OpenBLAS (not lib.kernels.blas's, which takes its count per call)
    to `n` threads when it has another count."""
    if _state["numpy_blas"] is None:
        import numpy  # noqa: F401  (loaded by now: lib's kernels use it)

        found = [
            c
            for c in ThreadpoolController().select(user_api="blas").lib_controllers
            if "numpy" in os.path.dirname(c.filepath)
        ]
        _state["numpy_blas"] = found[0] if found else False
    lib = _state["numpy_blas"]
    if lib and lib.get_num_threads() != n:
        lib.set_num_threads(n)


class _LoadMonitor:
    """How many threads the machine's other work leaves this process: every
    `LOAD_PERIOD` s, the busy CPU time of the whole machine (/proc/stat) minus this
    process's own (`os.times`), smoothed; started on first use, in each process."""

    def __init__(self):
        self.pid = None
        self.count = available_cores()
        self.other = 0.0  # cores' worth of other work, smoothed

    def threads(self) -> int:
        if self.pid != os.getpid():
            self.pid = os.getpid()
            self.count = available_cores()
            if self.count > 1 and _busy_seconds() is not None:
                threading.Thread(target=self._run, name="lib-load", daemon=True).start()
        return self.count

    def observe(self, cores: int, wall: float, busy: float, own: float) -> int:
        """One reading: over `wall` seconds the machine was busy for `busy` CPU seconds,
        this process for `own` of them. Updates and returns the thread count."""
        if wall > 0:
            other = max(0.0, busy - own) / wall
            self.other = 0.5 * self.other + 0.5 * other  # about the last 0.2 s
            self.count = threads_left(cores, self.other)
        return self.count

    def _run(self):
        pid, cores = os.getpid(), available_cores()
        last = (time.monotonic(), _busy_seconds(), _own_seconds())
        while pid == os.getpid():
            time.sleep(LOAD_PERIOD)
            now = (time.monotonic(), _busy_seconds(), _own_seconds())
            if now[1] is not None and last[1] is not None:
                self.observe(cores, now[0] - last[0], now[1] - last[1], now[2] - last[2])
            last = now


def threads_left(cores: int, other: float) -> int:
    """Threads for this process when `other` cores' worth of other work runs: the
    cores left, rounded to the nearest whole one, at least 1."""
    return max(1, min(cores, math.floor(cores - other + 0.5)))


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot at this process's
    priority or above, or None where there is no /proc/stat. From its first line (user,
    nice, system, idle, iowait, irq, softirq, steal): user, system, irq and softirq,
    and nice (the time of processes with a positive nice value) only if this process
    is niced itself: work at a lower priority than ours, such as `make test` (run under
    `nice`), gives way to our threads and should not make us give up a core."""
    try:
        with open("/proc/stat", "rb") as f:
            line = f.readline()
    except OSError:
        return None
    return busy_ticks(line, _niced()) / _CLOCK_TICKS if line.startswith(b"cpu ") else None


def busy_ticks(line: bytes, niced: bool) -> int:
    """Busy clock ticks in /proc/stat's first line (`_busy_seconds`): user, system, irq
    and softirq, plus nice when `niced`."""
    ticks = [int(x) for x in line.split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = (ticks + [0] * 7)[:7]
    return user + system + irq + softirq + (nice if niced else 0)


def _niced() -> bool:
    try:
        return os.getpriority(os.PRIO_PROCESS, 0) > 0
    except (AttributeError, OSError):
        return False


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
LOAD_PERIOD = 0.1  # seconds between the load monitor's readings
_LOAD = _LoadMonitor()


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
    k = min(n, follow_load() if threads is None else max(1, int(threads)))
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
