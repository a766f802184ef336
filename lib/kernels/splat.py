"""Bilinear splatting (forward warping), differentiable in the values and the positions.

Each of P source values is added to the four pixels around its fractional target
position (row, col) of an S x S image, with bilinear weights; corners outside the image
are dropped. `lib.models.pixel_mover`'s splat motion moves the people so: a person's
pixels all move by its velocity and stay together, where sampling backwards would
stretch it wherever the velocity field varies. NumPy (bincount) and CuPy.
"""

import chainer
import numpy as np
from chainer import backend


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
        index, w, dr, dc = corners(rows, cols, self.size)
        n, c, _ = values.shape
        xp = backend.get_array_module(values)
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
