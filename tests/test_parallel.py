"""lib/parallel.py: the one pool factory, its two start methods, and a dead worker."""

import os
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from lib import parallel

ROOT = Path(__file__).resolve().parents[1]


def square(x):
    return x * x


def worker_pid(_):
    time.sleep(0.05)  # so that both workers take tasks
    return os.getpid()


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


def _alive(pid):
    return parallel.process_start_time(pid) is not None


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="the parent watch needs /proc")
@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_workers_exit_when_their_parent_is_killed(start, tmp_path):
    # kill -9 of a script (07 under `make agent`, say) must not leave its workers behind
    script = tmp_path / "orphans.py"
    script.write_text(
        "import os, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from lib import parallel\n"
        "from tests.test_parallel import worker_pid\n"
        "if __name__ == '__main__':\n"
        f"    pool = parallel.make_pool(2, start={start!r})\n"
        "    pids = {p for p in parallel.imap_unordered(pool, worker_pid, range(8))}\n"
        "    print(*sorted(pids), flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert workers and all(_alive(p) for p in workers)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)
