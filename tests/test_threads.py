"""How many threads the kernels and BLAS use (lib/kernels/runtime.py): a fixed count
from --threads, LIB_THREADS or OPENBLAS_NUM_THREADS, or, by default, the cores that
the machine's other work leaves free."""

import os
import subprocess
import sys

import numpy as np
import pytest
from cli_helpers import ROOT, one_line_error, run_here
from threadpoolctl import ThreadpoolController

from lib import cli
from lib.kernels import runtime

THREAD_VARIABLES = ("LIB_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


@pytest.mark.parametrize(
    "cores, other, threads",
    [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 2.0, 1), (4, 1.0, 3),
     (4, 2.2, 2), (4, 3.9, 1), (1, 0.0, 1)],
)  # fmt: skip
def test_the_threads_left_are_the_cores_others_leave_rounded(cores, other, threads):
    assert runtime.threads_left(cores, other) == threads


def test_the_monitor_backs_off_while_other_work_runs_and_returns_after():
    """Readings as /proc/stat would give them on 2 cores: a second job busy on one core
    for 0.3 s takes this process to one thread; 0.3 s idle again brings back two."""
    load = runtime._LoadMonitor()
    seen = []
    for _ in range(3):  # this process busy on 2 cores, nothing else
        seen.append(load.observe(2, 0.1, busy=0.2, own=0.2))
    for _ in range(3):  # another job busy on a whole core beside it
        seen.append(load.observe(2, 0.1, busy=0.2, own=0.1))
    for _ in range(3):  # the other job ends
        seen.append(load.observe(2, 0.1, busy=0.1, own=0.1))
    assert seen == [2, 2, 2, 2, 1, 1, 2, 2, 2]  # smoothed: off after 0.2 s, back after 0.1 s
    assert load.observe(2, 0.0, busy=5.0, own=0.0) == 2  # no time passed: no change


@pytest.mark.parametrize(
    "env, fixed",
    [({"LIB_THREADS": "3"}, 3), ({"LIB_THREADS": "auto"}, None), ({}, None),
     ({"OPENBLAS_NUM_THREADS": "1"}, 1), ({"LIB_THREADS": "2", "OPENBLAS_NUM_THREADS": "1"}, 2),
     ({"LIB_THREADS": "auto", "OMP_NUM_THREADS": "1"}, 1)],
)  # fmt: skip
def test_a_fixed_count_comes_from_lib_threads_then_openblas(monkeypatch, env, fixed):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert runtime.fixed_threads() == fixed
    if fixed is not None:
        assert runtime.kernel_threads() == fixed


def _numpy_blas():
    (lib,) = [
        c
        for c in ThreadpoolController().select(user_api="blas").lib_controllers
        if "numpy" in os.path.dirname(c.filepath)
    ]
    return lib


def test_numpy_blas_takes_the_count_at_the_next_safe_point(monkeypatch):
    monkeypatch.setenv("LIB_THREADS", "1")
    before = runtime.follow_load()
    try:
        assert before == 1 and _numpy_blas().get_num_threads() == 1
        runtime.set_threads(2)
        assert os.environ["LIB_THREADS"] == "2"
        assert _numpy_blas().get_num_threads() == 2 == runtime.kernel_threads()
        a = np.ones((300, 300), np.float32)
        assert float((a @ a)[0, 0]) == 300.0  # BLAS still works after the change
    finally:
        runtime.set_threads(1)
    assert _numpy_blas().get_num_threads() == 1


def test_threads_flag_sets_the_variable_and_refuses_bad_counts(monkeypatch):
    monkeypatch.setenv("LIB_THREADS", "auto")
    p = cli.ArgumentParser()
    cli.add_common_args(p)
    assert not hasattr(p.parse_args([]), "threads")  # not given: the variable stays
    assert os.environ["LIB_THREADS"] == "auto"
    assert p.parse_args(["--threads", "3"]).threads == "3"
    assert os.environ["LIB_THREADS"] == "3"
    assert p.parse_args(["--threads", "AUTO"]).threads == "auto"
    assert os.environ["LIB_THREADS"] == "auto"
    line = one_line_error(run_here("08_test_controller.py", "--threads", "0"))
    assert "--threads" in line and "must be >= 1" in line
    line = one_line_error(run_here("08_test_controller.py", "--threads", "many"))
    assert "--threads" in line and "whole number" in line


def test_a_fixed_count_gives_the_same_bits_as_that_many_threads_always_did(tmp_path):
    """Two training steps of V and M on 2 threads fixed by --threads 2's variable equal
    the same steps with OpenBLAS told 2 threads the old way (OPENBLAS_NUM_THREADS), bit
    for bit; the load monitor never starts with a fixed count, and does without one."""
    outs = []
    for env in ({"LIB_THREADS": "2"}, {"OPENBLAS_NUM_THREADS": "2"}):
        full = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
        full.update(env)
        out = tmp_path / f"w{len(outs)}.npz"
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "tests", "thread_bits.py"), str(out)],
            check=False, env=full, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["threads", "2", "monitor", "False"]
        outs.append(out)
    # With nothing fixed, the count follows the load: the monitor starts (on > 1 core).
    free = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "thread_bits.py"), str(tmp_path / "a.npz")],
        check=True, env=free, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    follows = runtime.available_cores() > 1 and os.path.exists("/proc/stat")
    assert proc.stdout.split()[2:] == ["monitor", str(follows)]
    with np.load(outs[0]) as a, np.load(outs[1]) as b:
        assert a.files == b.files and a.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_busy_time_counts_niced_work_only_for_a_niced_process():
    """/proc/stat's columns: user nice system idle iowait irq softirq steal. Work run
    under `nice` (make test) gives way to a normal-priority job, so it does not count
    against it; for a niced process it does."""
    line = b"cpu  100 40 20 900 7 3 2 5 0 0\n"
    assert runtime.busy_ticks(line, niced=False) == 100 + 20 + 3 + 2
    assert runtime.busy_ticks(line, niced=True) == 100 + 40 + 20 + 3 + 2
    assert runtime._busy_seconds() is None or runtime._busy_seconds() > 0
