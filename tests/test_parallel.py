"""lib/parallel.py: the one pool factory, its two start methods, and a dead worker."""

import os
from concurrent.futures.process import BrokenProcessPool

import pytest

from lib import parallel


def square(x):
    return x * x


def die_on_three(x):
    if x == 3:
        os._exit(5)
    return x


@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_local_pool_runs_every_task_in_workers(start):
    env_before = dict(os.environ)
    pool = parallel.make_pool(2, start=start)
    try:
        assert parallel.is_local(pool)
        assert sorted(parallel.imap_unordered(pool, square, range(6))) == [0, 1, 4, 9, 16, 25]
        workers = parallel.worker_processes(pool)
        assert len(workers) == 2 and os.getpid() not in workers
    finally:
        parallel.shutdown(pool)
    assert dict(os.environ) == env_before


def test_a_dead_worker_fails_the_pool_instead_of_hanging():
    pool = parallel.make_pool(2)
    try:
        with pytest.raises(BrokenProcessPool):
            list(parallel.imap_unordered(pool, die_on_three, range(6)))
    finally:
        parallel.shutdown(pool)


def test_unknown_start_method_and_backend():
    with pytest.raises(ValueError, match="start must be"):
        parallel.make_pool(1, start="spawn")
    with pytest.raises(parallel.BackendUnavailable, match="unknown backend"):
        parallel.make_pool(1, backend="mpi")
