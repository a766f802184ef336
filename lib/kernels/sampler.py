"""Bilinear sampling of frames: `F.spatial_transformer_sampler`, fast where no graph is
needed.

The pixel mover (`lib.models.pixel_mover`) samples every dreamed frame from the last
real one. Chainer's CPU sampler gathers the four neighbours of every output pixel with
fancy indexing, one frame at a time, and builds several full-size temporaries: in the
pixel dream (`lib.control.pixel_dream`) it took most of a step. Without a graph
(`chainer.config.enable_backprop` False) on NumPy arrays, `sample` runs a numba kernel
instead, split over the batch on the project's threads (`lib.kernels.runtime`); it
computes what Chainer's does (zeros outside the frame, the same clipping), in float32.
Anything else (training, CuPy) goes to Chainer's own.
"""

import chainer
import chainer.functions as F
import numba
import numpy as np

from lib.kernels import runtime


@numba.njit(cache=True, nogil=True)
def _sample(x, grid, y):
    """y[b, c, p] = x[b, c] at grid[b, :, p] (bilinear; zeros outside), as Chainer's
    `spatial_transformer_sampler._forward`.

    Args:
        x: (B, C, H, W) float32; grid: (B, 2, P) float32, x (the column) first, -1 and
            1 the first and last pixels' centres; y: (B, C, P) float32, overwritten.
    """
    n_b, n_c, n_h, n_w = x.shape
    n_p = grid.shape[2]
    half_w = np.float32((n_w - 1) / 2.0)
    half_h = np.float32((n_h - 1) / 2.0)
    one = np.float32(1.0)
    for b in range(n_b):
        for p in range(n_p):
            # coordinates in the frame padded by one pixel of zeros
            u = (grid[b, 0, p] + one) * half_w + one
            v = (grid[b, 1, p] + one) * half_h + one
            u = min(max(u, np.float32(0.0)), np.float32(n_w + 1))
            v = min(max(v, np.float32(0.0)), np.float32(n_h + 1))
            u0 = min(max(int(np.floor(u)), 0), n_w)
            v0 = min(max(int(np.floor(v)), 0), n_h)
            du1, du0 = np.float32(u0 + 1) - u, u - np.float32(u0)
            dv1, dv0 = np.float32(v0 + 1) - v, v - np.float32(v0)
            w1, w2, w3, w4 = du1 * dv1, du0 * dv1, du1 * dv0, du0 * dv0
            # the four neighbours in the unpadded frame (-1 or n: the zero border)
            r0, r1, c0, c1 = v0 - 1, v0, u0 - 1, u0
            in_r0, in_r1 = 0 <= r0 < n_h, 0 <= r1 < n_h
            in_c0, in_c1 = 0 <= c0 < n_w, 0 <= c1 < n_w
            for c in range(n_c):
                acc = np.float32(0.0)
                if in_r0 and in_c0:
                    acc += w1 * x[b, c, r0, c0]
                if in_r0 and in_c1:
                    acc += w2 * x[b, c, r0, c1]
                if in_r1 and in_c0:
                    acc += w3 * x[b, c, r1, c0]
                if in_r1 and in_c1:
                    acc += w4 * x[b, c, r1, c1]
                y[b, c, p] = acc


def sample(x, grid):
    """`F.spatial_transformer_sampler(x, grid)`: x (B, C, H, W), grid (B, 2, Ho, Wo)
    -> (B, C, Ho, Wo) Variable; through the numba kernel when no graph is built and
    both are NumPy arrays (or Variables of them) of float32."""
    xa = x.array if isinstance(x, chainer.Variable) else x
    ga = grid.array if isinstance(grid, chainer.Variable) else grid
    fast = (
        not chainer.config.enable_backprop
        and isinstance(xa, np.ndarray)
        and isinstance(ga, np.ndarray)
        and xa.dtype == np.float32
        and ga.dtype == np.float32
    )
    if not fast:
        return F.spatial_transformer_sampler(x, grid)
    n_b, n_c = xa.shape[:2]
    out_hw = ga.shape[2:]
    xa = np.ascontiguousarray(xa)
    g = np.ascontiguousarray(ga).reshape(n_b, 2, -1)
    y = np.empty((n_b, n_c, g.shape[2]), np.float32)
    runtime.parallel_ranges(lambda lo, hi: _sample(xa[lo:hi], g[lo:hi], y[lo:hi]), n_b)
    return chainer.Variable(y.reshape(n_b, n_c, *out_hw))
