"""Bilinear splatting (forward warping), differentiable in the values and the positions.

Each of P source values is added to the four pixels around its fractional target
position (row, col) of an S x S image, with bilinear weights; corners outside the image
are dropped. `lib.models.pixel_mover`'s splat motion moves the people so: a person's
pixels all move by its velocity and stay together, where sampling backwards would
stretch it wherever the velocity field varies. On NumPy arrays numba kernels (split over
the batch on the project's threads, `lib.kernels.runtime`); CuPy, or
`chainer.config.fastconv` False, through bincount and gathers.
"""

import chainer
import numba
import numpy as np
from chainer import backend

from lib.kernels import runtime
from lib.kernels.fastconv import use_fast


@numba.njit(cache=True, nogil=True)
def _splat(values, rows, cols, size, out):
    """out (N, C, S*S), overwritten: `Splat`'s forward."""
    n_n, n_c, n_p = values.shape
    for n in range(n_n):
        out[n] = 0.0
        for p in range(n_p):
            i0 = int(np.floor(rows[n, p]))
            j0 = int(np.floor(cols[n, p]))
            a = rows[n, p] - i0
            b = cols[n, p] - j0
            for k in range(4):
                i = i0 + k // 2
                j = j0 + k % 2
                if i < 0 or i >= size or j < 0 or j >= size:
                    continue
                wi = a if k // 2 else 1.0 - a
                wj = b if k % 2 else 1.0 - b
                w = wi * wj
                idx = i * size + j
                for c in range(n_c):
                    out[n, c, idx] += values[n, c, p] * w


@numba.njit(cache=True, nogil=True)
def _splat_grad(values, rows, cols, gout, size, gvalues, grows, gcols):
    """`SplatGrad`'s forward: gvalues (N, C, P), grows and gcols (N, P), overwritten."""
    n_n, n_c, n_p = values.shape
    for n in range(n_n):
        for p in range(n_p):
            i0 = int(np.floor(rows[n, p]))
            j0 = int(np.floor(cols[n, p]))
            a = rows[n, p] - i0
            b = cols[n, p] - j0
            for c in range(n_c):
                gvalues[n, c, p] = 0.0
            gr = 0.0
            gc = 0.0
            for k in range(4):
                i = i0 + k // 2
                j = j0 + k % 2
                if i < 0 or i >= size or j < 0 or j >= size:
                    continue
                di, dj = k // 2, k % 2
                wi = a if di else 1.0 - a
                wj = b if dj else 1.0 - b
                # d w / d row and d w / d col
                dwr = (1.0 if di else -1.0) * wj
                dwc = (1.0 if dj else -1.0) * wi
                idx = i * size + j
                for c in range(n_c):
                    g = gout[n, c, idx]
                    gvalues[n, c, p] += g * wi * wj
                    gv = g * values[n, c, p]
                    gr += gv * dwr
                    gc += gv * dwc
            grows[n, p] = gr
            gcols[n, p] = gc


def corners(rows, cols, size):
    """(index (N, P, 4) int64 flat pixel, weight (N, P, 4), d weight / d row, d / d col),
    corners outside the S x S image weighing 0."""
    xp = backend.get_array_module(rows)
    i0, j0 = xp.floor(rows), xp.floor(cols)
    a, b = rows - i0, cols - j0
    i0, j0 = i0.astype(np.int64), j0.astype(np.int64)
    ii = xp.stack([i0, i0, i0 + 1, i0 + 1], -1)
    jj = xp.stack([j0, j0 + 1, j0, j0 + 1], -1)
    w = xp.stack([(1 - a) * (1 - b), (1 - a) * b, a * (1 - b), a * b], -1)
    dr = xp.stack([-(1 - b), -b, 1 - b, b], -1)
    dc = xp.stack([-(1 - a), 1 - a, -a, a], -1)
    inside = (ii >= 0) & (ii < size) & (jj >= 0) & (jj < size)
    index = xp.where(inside, ii * size + jj, 0)
    m = inside.astype(rows.dtype)
    return index, w * m, dr * m, dc * m


class Splat(chainer.function_node.FunctionNode):
    def __init__(self, size):
        self.size = int(size)

    def forward(self, inputs):
        values, rows, cols = inputs
        xp = backend.get_array_module(values)
        self.retain_inputs((0, 1, 2))
        n, c, _ = values.shape
        s2 = self.size * self.size
        if use_fast(values):
            values, rows, cols = (np.ascontiguousarray(a) for a in (values, rows, cols))
            out = np.empty((n, c, s2), values.dtype)
            runtime.parallel_ranges(
                lambda lo, hi: _splat(values[lo:hi], rows[lo:hi], cols[lo:hi], self.size,
                                      out[lo:hi]), n,
            )  # fmt: skip
            return (out,)
        index, w, _, _ = corners(rows, cols, self.size)
        flat = (index + (np.arange(n) * s2)[:, None, None]).ravel()
        out = xp.empty((n, c, s2), values.dtype)
        for ch in range(c):
            wv = (values[:, ch, :, None] * w).ravel()
            out[:, ch] = xp.bincount(flat, weights=wv, minlength=n * s2).reshape(n, s2)
        return (out,)

    def backward(self, indexes, grad_outputs):
        values, rows, cols = self.get_retained_inputs()
        (gout,) = grad_outputs
        if gout is None:
            return None, None, None
        return SplatGrad(self.size).apply((values, rows, cols, gout))


class SplatGrad(chainer.function_node.FunctionNode):
    """The gradients of `Splat` wrt values, rows and cols (first order only)."""

    def __init__(self, size):
        self.size = int(size)

    def forward(self, inputs):
        values, rows, cols, gout = inputs
        n, c, _ = values.shape
        xp = backend.get_array_module(values)
        if use_fast(values):
            values, rows, cols, gout = (np.ascontiguousarray(a) for a in (values, rows, cols, gout))
            gvalues = np.empty_like(values)
            grows, gcols = np.empty_like(rows), np.empty_like(cols)

            def run(lo, hi):
                _splat_grad(values[lo:hi], rows[lo:hi], cols[lo:hi], gout[lo:hi], self.size,
                            gvalues[lo:hi], grows[lo:hi], gcols[lo:hi])  # fmt: skip

            runtime.parallel_ranges(run, n)
            return gvalues, grows, gcols
        index, w, dr, dc = corners(rows, cols, self.size)
        # g (N, C, P, 4): the output gradient at each value's four corners
        g = gout[
            xp.arange(n)[:, None, None, None], xp.arange(c)[None, :, None, None], index[:, None]
        ]
        gvalues = (g * w[:, None]).sum(-1)
        gv = (g * values[..., None]).sum(1)  # (N, P, 4)
        return (
            gvalues.astype(values.dtype),
            (gv * dr).sum(-1).astype(rows.dtype),
            (gv * dc).sum(-1).astype(cols.dtype),
        )


def splat(values, rows, cols, size):
    """(N, C, S*S) Variable: values (N, C, P) splatted at (rows, cols) (N, P), fractional
    pixel indices (row 0 / column 0 the first pixel's centre); all three may carry a
    graph."""
    return Splat(size).apply((values, rows, cols))[0]
