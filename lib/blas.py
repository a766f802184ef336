"""Single-threaded float32 GEMM for kernels that split work over their own threads.

NumPy's wheel bundles OpenBLAS 0.3.23; SciPy's (a dependency already) bundles
a newer one, `libscipy_openblas` 0.3.30, whose kernels run the small, skinny
GEMMs of `lib.fast_encoder` faster on this project's 2-core AMD machine (one
thread, GFLOP/s, NumPy -> SciPy's library):

| GEMM (M x K x N)      | where                      | NumPy | SciPy's |
|-----------------------|----------------------------|-------|---------|
| 3600 x 48 x 32        | first conv, 4 frames       | 50    | 64      |
| 9 x (1568 x 128 x 64) | second conv, Winograd      | 70    | 83      |
| 16 x (128 x 256 x 128)| third conv, Winograd       | 69    | 76      |

SciPy's own wrapper (`scipy.linalg.blas.sgemm`) holds the GIL, so the two
encoder threads would take turns; here the library's `cblas_sgemm` is called
from a numba function instead, which releases the GIL. The library's threads
are set to one when it is loaded: callers bring their own threads.

`matmul(a, b, out)` uses it when it is found (`AVAILABLE`) and NumPy's
`matmul` otherwise (other platforms, a SciPy built against another BLAS), and
for single-row products, which NumPy sends to GEMV. Results of the two differ
in the last bits; which one runs depends only on the shapes, so a frame's
result never depends on the thread count.
"""

from __future__ import annotations

import ctypes
import glob
import os

import numba
import numpy as np

_ROW_MAJOR, _NO_TRANS = 101, 111


def _load():
    """SciPy's OpenBLAS `cblas_sgemm`, or None."""
    try:
        import scipy
    except ImportError:
        return None
    libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "libscipy_openblas*.so"))):
        try:
            lib = ctypes.CDLL(path)
            sgemm = lib.scipy_cblas_sgemm
            set_threads = lib.scipy_openblas_set_num_threads
        except (OSError, AttributeError):
            continue
        set_threads.argtypes = [ctypes.c_int]
        set_threads(1)
        sgemm.restype = None
        sgemm.argtypes = [ctypes.c_int] * 6 + [
            ctypes.c_float,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_float,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        return sgemm
    return None


_SGEMM = _load()
AVAILABLE = _SGEMM is not None

if AVAILABLE:
    _cblas_sgemm = _SGEMM

    # Not cached: the library's address is compiled in (about 0.3 s per process).
    @numba.njit(nogil=True)
    def _matmul_stack(a, b, out):
        n_s, n_m, n_k = a.shape
        n_n = b.shape[2]
        one, zero = np.float32(1.0), np.float32(0.0)
        for i in range(n_s):
            _cblas_sgemm(
                _ROW_MAJOR,
                _NO_TRANS,
                _NO_TRANS,
                n_m,
                n_n,
                n_k,
                one,
                a[i].ctypes.data,
                n_k,
                b[i].ctypes.data,
                n_n,
                zero,
                out[i].ctypes.data,
                n_n,
            )


def matmul(a, b, out):
    """out = a @ b on the calling thread; float32, C-contiguous.

    Args:
        a: (M, K) or (S, M, K).
        b: (K, N) or (S, K, N).
        out: (M, N) or (S, M, N), written.

    Returns:
        out.
    """
    if not AVAILABLE or a.shape[-2] == 1:
        # One row: NumPy's matmul goes to GEMV, ten times faster than this
        # GEMM (11 vs 96 us for 1 x 512 x 256).
        return np.matmul(a, b, out=out)
    for arr in (a, b, out):
        if arr.dtype != np.float32 or not arr.flags.c_contiguous:
            raise ValueError("blas.matmul takes C-contiguous float32 arrays")
    if a.ndim == 2:
        _matmul_stack(a[None], b[None], out[None])
    else:
        _matmul_stack(a, b, out)
    return out
