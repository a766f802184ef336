"""The ego-motion warp as four taps per cell: gather, its transpose, and a Chainer node.

A bilinear warp of an S x S map (`lib.models.ego_warp`) reads each new cell from four
old cells. Held as a dense (S², S²) matrix per agent it costs S⁴ numbers and an S⁴ C
product, which at a 14 x 14 map is 38,416 weights for 784 that are not zero. Here the
warp is its taps: `index` (B, S², 4) int32, the old cells each new cell reads (row-major
cells), and `weight` (B, S², 4) float32, their bilinear weights. Applying it is a gather
(B S² 4 C multiply-adds); its transpose, which backpropagation needs, is a scatter-add:

- `gather(maps, index, weight)`: `out[b, i] = sum_q weight[b, i, q] maps[b, index[b, i, q]]`;
- `scatter(grads, index, weight)`: `out[b, index[b, i, q]] += weight[b, i, q] grads[b, i]`;
- `warp(maps, index, weight)`: `gather` as a differentiable Chainer function.

On NumPy both are numba kernels (single-threaded, as the rest of M's step); on CuPy,
array ops (fancy indexing, `cupyx.scatter_add`).
"""

from __future__ import annotations

import numba
import numpy as np
from chainer import backend, function_node

TAPS = 4  # bilinear: the four corners of the cell a new cell's centre falls in


def gather(maps, index, weight):
    """(B, S², C) float32: the warped maps.

    Args:
        maps: (B, S², C) float32, NumPy or CuPy.
        index: (B, S², 4) integer, old cells (`< S²`) each new cell reads.
        weight: (B, S², 4) float32, their weights.
    """
    xp = backend.get_array_module(maps)
    if xp is np:
        return _on_cpu(maps, index, weight, transpose=False)
    return gather_array_ops(xp, maps, index, weight)


def gather_array_ops(xp, maps, index, weight):
    """`gather` in array operations of `xp` (the CuPy path; tested with NumPy)."""
    rows = xp.arange(maps.shape[0])[:, None, None]
    taps = maps[rows, index]  # (B, S², 4, C)
    out = weight[..., 0, None] * taps[:, :, 0]
    for q in range(1, index.shape[2]):
        out += weight[..., q, None] * taps[:, :, q]
    return out


def scatter_array_ops(xp, add_at, grads, index, weight):
    """`scatter` in array operations of `xp`, `add_at(out, indices, values)` being
    `cupyx.scatter_add` (the CuPy path) or `np.add.at` (its test)."""
    out = xp.zeros(grads.shape, grads.dtype)
    rows = xp.broadcast_to(xp.arange(grads.shape[0])[:, None, None], index.shape)
    add_at(out, (rows, index), weight[..., None] * grads[:, :, None, :])
    return out


@numba.njit(cache=True)
def _taps_kernel(src, index, weight, out, transpose):
    """out (zeroed) += the gather of src (transpose False) or its scatter (True)."""
    n_b, n_cells, n_taps = index.shape
    n_c = src.shape[2]
    for b in range(n_b):
        for i in range(n_cells):
            for q in range(n_taps):
                w = weight[b, i, q]
                j = index[b, i, q]
                dst, row = (out[b, j], src[b, i]) if transpose else (out[b, i], src[b, j])
                for ch in range(n_c):
                    dst[ch] += w * row[ch]


def _on_cpu(src, index, weight, transpose):
    out = np.zeros(src.shape, src.dtype)
    src, index = np.ascontiguousarray(src), np.ascontiguousarray(index)
    _taps_kernel(src, index, weight.astype(src.dtype, copy=False), out, transpose)
    return out


def scatter(grads, index, weight):
    """(B, S², C) float32: the transpose of `gather` applied to `grads` (B, S², C)."""
    xp = backend.get_array_module(grads)
    if xp is np:
        return _on_cpu(grads, index, weight, transpose=True)
    import cupyx  # only where CuPy runs

    return scatter_array_ops(xp, cupyx.scatter_add, grads, index, weight)


class Warp(function_node.FunctionNode):
    """`gather` with the taps as constants: gradient to the maps only."""

    def __init__(self, index, weight, transpose=False):
        self.index, self.weight, self.transpose = index, weight, transpose

    def forward(self, inputs):
        (maps,) = inputs
        op = scatter if self.transpose else gather
        return (op(maps, self.index, self.weight).astype(maps.dtype, copy=False),)

    def backward(self, indexes, grad_outputs):
        (gy,) = grad_outputs
        return Warp(self.index, self.weight, not self.transpose).apply((gy,))


def warp(maps, index, weight):
    """Differentiable `gather`: maps (B, S², C) Variable or array -> (B, S², C) Variable."""
    return Warp(index, weight).apply((maps,))[0]
