"""Process pools, made in one place: local worker processes, or a Ray cluster.

`make_pool` is the only pool factory. Locally it returns a
`concurrent.futures.ProcessPoolExecutor`, not a `multiprocessing.Pool`: when a
worker dies, an executor fails the pending tasks (`BrokenProcessPool`) where a
Pool waits for them forever. Its workers start one of two ways:

- "fork" (01/02's rollouts, as before): a copy of the parent, with its
  modules and compiled kernels, ready in milliseconds. Python 3.12+ warns (a
  DeprecationWarning, hidden by default) that forking a process that has
  threads can deadlock the child if one of them held a lock the child then
  needs; 01/02's children only step the environment and write files.
- "forkserver" (07's evaluator, whose parent holds kernel threads and, with
  `--gpu`, a CUDA context that a fork would break): children of a clean
  single-threaded server that imports `lib` and the environment once
  (`_PRELOAD`). It costs a second or two per pool (see docs/experiments.md),
  which is why 01/02 keep "fork".

A local pool's workers watch the process that made the pool and exit when it is
gone: a `kill -9` of a script (07 under `make agent`, say) would otherwise leave
them behind, waiting for tasks forever.

`--backend ray [--address ADDR]` returns `ray.util.multiprocessing.Pool`
instead; `imap_unordered` and `shutdown` take either kind, so a caller needs no
branch for the backend.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures

from lib import cli

BACKENDS = ("local", "ray")
# Modules the forkserver imports once, before it forks workers ("__main__" is its default).
_PRELOAD = ["__main__", "lib", "lib.env.rollouts", "lib.env.policies"]


# Seconds between a worker's checks that the process that made its pool still runs.
PARENT_CHECK_PERIOD = 0.5


def process_start_time(pid: int) -> str | None:
    """The start time of process `pid` (Linux /proc), None if it is gone, a zombie, or
    there is no /proc. With the pid it names one process, even after pids wrap."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # state; starttime, field 22


def _exit_when_gone(pid: int, started: str) -> None:
    while process_start_time(pid) == started:
        time.sleep(PARENT_CHECK_PERIOD)
    os._exit(1)


def _start_worker(parent: int, started: str | None, initializer, initargs) -> None:
    """Every local worker's initializer: the parent watch, then the caller's."""
    if started is not None:
        threading.Thread(target=_exit_when_gone, args=(parent, started), daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


class BackendUnavailable(RuntimeError):
    """The requested backend cannot be used here (for example Ray missing)."""


def check_backend(backend: str) -> None:
    """Raises BackendUnavailable unless `backend` can run here (Ray installed for "ray")."""
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "ray":
        try:
            import ray  # noqa: F401  (optional: only --backend ray needs it)
        except ImportError:
            raise BackendUnavailable(
                "--backend ray needs Ray: pip install -r requirements-ray.txt"
            ) from None


def make_pool(
    workers: int,
    backend: str = "local",
    address: str | None = None,
    initializer=None,
    initargs=(),
    start: str = "fork",
):
    """A pool of `workers` processes, each running `initializer(*initargs)` once.

    Args:
        workers: number of worker processes.
        backend: "local" (a `futures.ProcessPoolExecutor`) or "ray"
            (`ray.util.multiprocessing.Pool`).
        address: Ray cluster address (None starts a local Ray instance).
        initializer, initargs: run once in each worker, as in multiprocessing.
        start: how local workers start, "fork" or "forkserver" (see above).
    """
    check_backend(backend)
    if start not in ("fork", "forkserver"):
        raise ValueError(f"start must be 'fork' or 'forkserver', got {start!r}")
    if backend == "local":
        ctx = multiprocessing.get_context(start)
        if start == "forkserver":
            ctx.set_forkserver_preload(_PRELOAD)
        me = os.getpid()
        return futures.ProcessPoolExecutor(
            workers,
            mp_context=ctx,
            initializer=_start_worker,
            initargs=(me, process_start_time(me), initializer, initargs),
        )
    from ray.util.multiprocessing import Pool as RayPool  # optional: checked just above

    kwargs = {"ray_address": address} if address else {}
    return RayPool(processes=workers, initializer=initializer, initargs=initargs, **kwargs)


def is_local(pool) -> bool:
    """Whether `pool` is a local executor (it has `submit` and names dead workers)."""
    return isinstance(pool, futures.ProcessPoolExecutor)


def imap_unordered(pool, fn, tasks: Iterable) -> Iterator:
    """`fn(task)` for every task on `pool`, yielded as they finish.

    Raises:
        concurrent.futures.process.BrokenProcessPool: a local worker died.
        Exception: whatever `fn` raised in a worker.
    """
    if not is_local(pool):
        yield from pool.imap_unordered(fn, tasks)
        return
    pending = [pool.submit(fn, task) for task in tasks]
    for done in futures.as_completed(pending):
        yield done.result()


def shutdown(pool, wait: bool = False) -> None:
    """Stops `pool`'s workers; with `wait`, after the tasks already given finish, without
    it after the tasks already running (the others are cancelled). A local pool is always
    joined: its manager thread, left running, races the interpreter's exit handler over
    its wake-up pipe ("Exception ignored ... Bad file descriptor" after a clean exit)."""
    if is_local(pool):
        pool.shutdown(wait=True, cancel_futures=not wait)
    else:
        if wait:
            pool.close()
        else:
            pool.terminate()
        pool.join()


def worker_processes(pool: futures.ProcessPoolExecutor) -> dict:
    """{pid: multiprocessing.Process} of a local pool's workers.

    The executor has no public list of its processes; naming the tasks a dead
    worker held needs one, so this is the one place that reads the private
    `_processes` (an empty dict if a Python version drops it).
    """
    return dict(getattr(pool, "_processes", None) or {})


def add_worker_args(parser, default: int | None, help: str) -> None:
    """--workers (`default` processes, described by `help`), --backend and --address:
    where a script's parallel work runs."""
    parser.add_argument("--workers", type=cli.positive_int, default=default, help=help)
    parser.add_argument("--backend", choices=BACKENDS, default="local", help="where workers run")
    parser.add_argument("--address", default=None, help="Ray cluster address (with --backend ray)")
