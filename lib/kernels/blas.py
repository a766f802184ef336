"""float32 GEMM through the fastest OpenBLAS this environment has.

SciPy (a dependency already) bundles its own OpenBLAS, `libscipy_openblas`. It
was chosen when NumPy 1.26's wheel bundled an older OpenBLAS (0.3.23) whose
kernels ran this project's GEMMs slower than SciPy's 0.3.30; the measurements
are in docs/experiments.md. (NumPy 2.4's wheel bundles 0.3.31.)

SciPy's own wrapper (`scipy.linalg.blas.sgemm`) holds the GIL, so threads
that split work between them would take turns; here the library's
`cblas_sgemm` is called from numba functions, which release it.

- `matmul(a, b, out)`: on the calling thread only, for `lib.kernels.fast_encoder`,
  whose own threads each run a part of the batch.
- `gemm(a, b, out, trans_a, trans_b, accumulate, threads)`: one GEMM on
  `threads` threads, for `lib.kernels.fastconv`'s training passes.

Both use NumPy when the library is not found (`AVAILABLE` is False: other
platforms, a SciPy built against another BLAS), `matmul` also for single-row
products (NumPy sends them to GEMV) and `gemm` for anything but C-contiguous
float32. Which path runs depends only on shapes and dtypes, so a result never
depends on the thread count of the caller's own threads.
"""

from __future__ import annotations

import ctypes
import glob
import os

import numba
import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


# The library's C functions as numba sees them: called by symbol name, so the
# compiled kernels hold no address and numba can cache them like the other kernels
# (a per-process compile of `_gemm` cost 0.3-1 s of every script's start).
_I32 = numba.types.int32
_SYMBOLS = {
    "scipy_cblas_sgemm": numba.types.void(
        *[_I32] * 6,
        numba.types.float32,  # alpha
        numba.types.intp,  # A (an address, passed as the C ABI passes a pointer)
        _I32,
        numba.types.intp,  # B
        _I32,
        numba.types.float32,  # beta
        numba.types.intp,  # C
        _I32,
    ),
    "scipy_openblas_get_num_threads": _I32(),
    "scipy_openblas_set_num_threads": numba.types.void(_I32),
}


def _load():
    """Whether SciPy's OpenBLAS is loaded, its symbols visible to numba's linker."""
    try:
        import scipy  # here: without SciPy, the NumPy fallback runs
    except ImportError:
        return False
    from llvmlite import binding

    libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "libscipy_openblas*.so"))):
        try:
            lib = ctypes.CDLL(path)
            if not all(hasattr(lib, name) for name in _SYMBOLS):
                continue
            binding.load_library_permanently(path)
        except (OSError, RuntimeError):
            continue
        lib.scipy_openblas_set_num_threads.argtypes = [ctypes.c_int]
        lib.scipy_openblas_set_num_threads(1)
        return True
    return False


AVAILABLE = _load()

if AVAILABLE:
    _cblas_sgemm, _get_threads, _set_threads = (
        numba.types.ExternalFunction(name, sig) for name, sig in _SYMBOLS.items()
    )

    @numba.njit(nogil=True, cache=True)
    def _gemm(a, b, out, trans_a, trans_b, beta, threads):
        """out = op(a) @ op(b) + beta * out, row-major, on `threads` threads."""
        if _get_threads() != threads:
            _set_threads(threads)
        n_m, n_n = out.shape
        n_k = a.shape[0] if trans_a else a.shape[1]
        _cblas_sgemm(
            _ROW_MAJOR,
            _TRANS if trans_a else _NO_TRANS,
            _TRANS if trans_b else _NO_TRANS,
            n_m,
            n_n,
            n_k,
            np.float32(1.0),
            a.ctypes.data,
            a.shape[1],
            b.ctypes.data,
            b.shape[1],
            np.float32(beta),
            out.ctypes.data,
            n_n,
        )

    @numba.njit(nogil=True, cache=True)
    def _matmul_stack(a, b, out):
        for i in range(a.shape[0]):
            _gemm(a[i], b[i], out[i], False, False, 0.0, 1)


def _check(*arrays):
    for arr in arrays:
        if arr.dtype != np.float32 or not arr.flags.c_contiguous:
            raise ValueError("lib.kernels.blas takes C-contiguous float32 arrays")


def matmul(a, b, out):
    """out = a @ b on the calling thread only; float32, C-contiguous.

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
    _check(a, b, out)
    if a.ndim == 2:
        _matmul_stack(a[None], b[None], out[None])
    else:
        _matmul_stack(a, b, out)
    return out


def gemm(a, b, out, trans_a=False, trans_b=False, accumulate=False, threads=1):
    """out = op(a) @ op(b), or out += op(a) @ op(b), on `threads` threads.

    For `lib.kernels.fastconv`'s training GEMMs, which run one at a time on all cores
    (`threads=runtime.kernel_threads()`).

    Args:
        a, b: 2-D arrays; op transposes when `trans_a`/`trans_b`. Anything but
            C-contiguous float32 goes through NumPy.
        out: (M, N) C-contiguous float32.
        accumulate: add to `out` instead of overwriting it.
        threads: BLAS threads for this call.

    Returns:
        out.
    """
    usable = all(x.dtype == np.float32 and x.flags.c_contiguous for x in (a, b, out))
    if not (AVAILABLE and usable):  # NumPy for other dtypes (float64 gradient checks)
        product = (a.T if trans_a else a) @ (b.T if trans_b else b)
        if accumulate:
            out += product
        else:
            out[...] = product
        return out
    _gemm(a, b, out, bool(trans_a), bool(trans_b), 1.0 if accumulate else 0.0, int(threads))
    return out
