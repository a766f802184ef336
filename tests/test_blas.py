"""lib.kernels.blas: single-threaded GEMM through SciPy's OpenBLAS, with NumPy's as fallback."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from lib.kernels import blas


def _operands(shape_a, shape_b, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=shape_a).astype(np.float32),
        rng.normal(size=shape_b).astype(np.float32),
    )


@pytest.mark.parametrize(
    "shape_a, shape_b",
    [
        ((37, 48), (48, 32)),
        ((1, 512), (512, 256)),
        ((3, 20, 16), (3, 16, 8)),
        ((9, 1, 5), (9, 5, 4)),
    ],
    ids=["2d", "one-row", "stack", "stack-one-row"],
)
def test_matmul_equals_numpy(shape_a, shape_b):
    a, b = _operands(shape_a, shape_b)
    out = np.empty(shape_a[:-1] + shape_b[-1:], np.float32)
    assert blas.matmul(a, b, out) is out
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def test_scipys_openblas_is_found_here():
    """The pinned SciPy wheel bundles it; without it everything still works
    (next test), only slower."""
    assert blas.AVAILABLE


def test_the_gemm_kernels_are_cached_and_find_the_library_in_a_new_process():
    """They call OpenBLAS by symbol name, so numba caches them (a per-process compile
    cost every script 0.3-1 s); a fresh process runs them from that cache and still
    finds the library's symbols (a cached kernel is linked again, by name, on load)."""
    for kernel in (blas._gemm, blas._matmul_stack):
        assert type(kernel._cache).__name__ == "FunctionCache"
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    blas.matmul(a, a.T.copy(), np.empty((3, 3), np.float32))  # compiles or loads, caches
    code = (
        "import lib, numpy as np\n"
        "from lib.kernels import blas\n"
        "a = np.arange(12, dtype=np.float32).reshape(3, 4)\n"
        "out = blas.matmul(a, a.T.copy(), np.empty((3, 3), np.float32))\n"
        "assert (out == a @ a.T).all() and blas._matmul_stack.stats.cache_hits, "
        "blas._matmul_stack.stats\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def test_fallback_is_numpy(monkeypatch):
    a, b = _operands((6, 7), (7, 3))
    monkeypatch.setattr(blas, "AVAILABLE", False)
    out = np.empty((6, 3), np.float32)
    blas.matmul(a, b, out)
    np.testing.assert_array_equal(out, np.matmul(a, b))


def test_refuses_strided_input():
    a, b = _operands((8, 8), (8, 8))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        blas.matmul(a[:, ::2], b[::2], np.empty((8, 8), np.float32))


def test_threads_at_once_give_the_same_products():
    """Two threads calling at the same time (the GIL is released) get exactly
    what one thread gets."""
    pairs = [_operands((9, 300, 64), (9, 64, 32), seed) for seed in range(2)]
    alone = []
    for a, b in pairs:
        out = np.empty((9, 300, 32), np.float32)
        alone.append(blas.matmul(a, b, out).copy())
    together = [np.empty((9, 300, 32), np.float32) for _ in pairs]

    def work(i):
        for _ in range(20):
            blas.matmul(*pairs[i], together[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, expected in zip(together, alone):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_transposes_and_threads(trans_a, trans_b, threads):
    a, b = _operands((40, 30) if not trans_a else (30, 40), (30, 20) if not trans_b else (20, 30))
    out = np.empty((40, 20), np.float32)
    blas.gemm(a, b, out, trans_a=trans_a, trans_b=trans_b, threads=threads)
    expected = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_gemm_accumulates():
    a, b = _operands((50, 10), (50, 8))
    out = np.ones((10, 8), np.float32)
    blas.gemm(a, b, out, trans_a=True, accumulate=True, threads=2)
    np.testing.assert_allclose(out, 1.0 + a.T.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def test_gemm_other_dtypes_go_through_numpy():
    """float64 (the gradient checks) and strided views are still right."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(5, 4))
    out = np.zeros((6, 4))
    blas.gemm(a, b, out, accumulate=True)
    np.testing.assert_allclose(out, a @ b)
    a32, b32 = _operands((8, 6), (6, 4))
    out32 = np.empty((4, 4), np.float32)
    blas.gemm(a32[::2], b32, out32)
    np.testing.assert_allclose(out32, a32[::2] @ b32, rtol=1e-6)
