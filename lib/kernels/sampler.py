"""Bilinear sampling of frames: `F.spatial_transformer_sampler`, in numba on the CPU.

The pixel mover (`lib.models.pixel_mover`) samples every dreamed frame from the last
real one. Chainer's CPU sampler gathers the four neighbours of every output pixel with
fancy indexing, one frame at a time, and builds several full-size temporaries; its
backward adds the gradient back with `np.add.at`. In the pixel dream
(`lib.control.pixel_dream`) the forward took most of a step, and in 04b's training the
backward took almost half of it. `sample` runs `BilinearSampler` instead on NumPy
arrays: a numba forward, and a numba backward that gives the frame's and the grid's
gradients in one pass, each split over the batch on the project's threads
(`lib.kernels.runtime`). It computes what Chainer's does (zeros outside the frame, the
same clipping, the grid's gradient zero where the coordinate is clipped). First-order
only (no double backprop). CuPy arrays go to Chainer's own.
"""

import chainer
import chainer.functions as F
import numba
import numpy as np

from lib.kernels import runtime
from lib.kernels.fastconv import use_fast


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


@numba.njit(cache=True, nogil=True)
def _sample_backward(x, grid, gy, gx, ggrid):
    """The gradients of `_sample`: gx (B, C, H, W) and ggrid (B, 2, P), overwritten,
    from gy (B, C, P); as Chainer's `spatial_transformer_sampler._backward`."""
    n_b, n_c, n_h, n_w = x.shape
    n_p = grid.shape[2]
    half_w = (n_w - 1) / 2.0
    half_h = (n_h - 1) / 2.0
    for b in range(n_b):
        gx[b] = 0.0
        for p in range(n_p):
            u = (grid[b, 0, p] + 1.0) * half_w + 1.0
            v = (grid[b, 1, p] + 1.0) * half_h + 1.0
            uc = min(max(u, 0.0), n_w + 1.0)
            vc = min(max(v, 0.0), n_h + 1.0)
            u0 = min(max(int(np.floor(uc)), 0), n_w)
            v0 = min(max(int(np.floor(vc)), 0), n_h)
            du1, du0 = (u0 + 1) - uc, uc - u0
            dv1, dv0 = (v0 + 1) - vc, vc - v0
            r0, r1, c0, c1 = v0 - 1, v0, u0 - 1, u0
            in_r0, in_r1 = 0 <= r0 < n_h, 0 <= r1 < n_h
            in_c0, in_c1 = 0 <= c0 < n_w, 0 <= c1 < n_w
            gu = 0.0
            gv = 0.0
            for c in range(n_c):
                g = gy[b, c, p]
                x1 = x[b, c, r0, c0] if in_r0 and in_c0 else 0.0
                x2 = x[b, c, r0, c1] if in_r0 and in_c1 else 0.0
                x3 = x[b, c, r1, c0] if in_r1 and in_c0 else 0.0
                x4 = x[b, c, r1, c1] if in_r1 and in_c1 else 0.0
                gu += g * (dv1 * (x2 - x1) + dv0 * (x4 - x3))
                gv += g * (du1 * (x3 - x1) + du0 * (x4 - x2))
                if in_r0 and in_c0:
                    gx[b, c, r0, c0] += g * du1 * dv1
                if in_r0 and in_c1:
                    gx[b, c, r0, c1] += g * du0 * dv1
                if in_r1 and in_c0:
                    gx[b, c, r1, c0] += g * du1 * dv0
                if in_r1 and in_c1:
                    gx[b, c, r1, c1] += g * du0 * dv0
            ggrid[b, 0, p] = gu * half_w if 0.0 < u < n_w + 1.0 else 0.0
            ggrid[b, 1, p] = gv * half_h if 0.0 < v < n_h + 1.0 else 0.0


class BilinearSampler(chainer.function_node.FunctionNode):
    """`F.spatial_transformer_sampler` on NumPy arrays through the numba kernels
    (x: (B, C, H, W), grid: (B, 2, Ho, Wo) -> (B, C, Ho, Wo))."""

    def forward_cpu(self, inputs):
        x, grid = (np.ascontiguousarray(a) for a in inputs)
        n_b, n_c = x.shape[:2]
        self._out_hw = grid.shape[2:]
        g = grid.reshape(n_b, 2, -1)
        y = np.empty((n_b, n_c, g.shape[2]), x.dtype)
        runtime.parallel_ranges(lambda lo, hi: _sample(x[lo:hi], g[lo:hi], y[lo:hi]), n_b)
        self.retain_inputs((0, 1))
        return (y.reshape(n_b, n_c, *self._out_hw),)

    def backward(self, indexes, grad_outputs):
        x, grid = (np.ascontiguousarray(v.array) for v in self.get_retained_inputs())
        n_b, n_c = x.shape[:2]
        g = grid.reshape(n_b, 2, -1)
        gy = np.ascontiguousarray(grad_outputs[0].array, dtype=x.dtype).reshape(n_b, n_c, -1)
        gx = np.empty_like(x)
        ggrid = np.empty(g.shape, grid.dtype)

        def run(lo, hi):
            _sample_backward(x[lo:hi], g[lo:hi], gy[lo:hi], gx[lo:hi], ggrid[lo:hi])

        runtime.parallel_ranges(run, n_b)
        return chainer.Variable(gx), chainer.Variable(ggrid.reshape(grid.shape))


def sample(x, grid):
    """`F.spatial_transformer_sampler(x, grid)`: x (B, C, H, W), grid (B, 2, Ho, Wo)
    -> (B, C, Ho, Wo) Variable; through `BilinearSampler` when both are NumPy arrays
    (or Variables of them) of one float dtype, else Chainer's own."""
    fast = use_fast(x) and use_fast(grid) and x.dtype.kind == "f" and grid.dtype == x.dtype
    if not fast:
        return F.spatial_transformer_sampler(x, grid)
    return BilinearSampler().apply((x, grid))[0]
