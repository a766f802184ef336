"""A box filter: `F.average_pooling_2d(x, k, stride=1, pad=k // 2)`, by running sums.

The splat motion of the pixel mover (`lib.models.pixel_mover`) fills what moved with the
mean of its k x k surroundings. Chainer's average pooling on the CPU goes through
im2col and col2im, a k² copy of the frame each way: a fifth of a 04b training step.
On NumPy arrays `box_mean` takes two running sums instead (one along each axis), and its
gradient is the same filter (a centred box with zero padding is its own adjoint). The
mean divides by k² everywhere, as Chainer's does (the padding counts as zeros).
"""

import chainer
import chainer.functions as F
import numpy as np

from lib.kernels.fastconv import use_fast


def _box_sum(x, k):
    """(N, C, H, W): the sum of each pixel's k x k neighbourhood (zeros outside)."""
    p = k // 2
    for axis in (2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (p + 1, p)
        c = np.cumsum(np.pad(x, pad), axis=axis, dtype=x.dtype)
        # window sums: the running sum k places on, less the running sum here
        ahead, here = [slice(None)] * 4, [slice(None)] * 4
        ahead[axis], here[axis] = slice(k, None), slice(None, -k)
        x = c[tuple(ahead)] - c[tuple(here)]
    return x


class BoxSum(chainer.function_node.FunctionNode):
    """k x k box sums of (N, C, H, W) NumPy arrays (k odd)."""

    def __init__(self, k):
        self.k = int(k)

    def forward_cpu(self, inputs):
        return (_box_sum(inputs[0], self.k),)

    def backward(self, indexes, grad_outputs):
        return (BoxSum(self.k).apply(grad_outputs)[0],)


def box_mean(x, k: int):
    """`F.average_pooling_2d(x, k, stride=1, pad=k // 2)` for odd k: each pixel's k x k
    mean (zeros outside, divided by k²); by running sums on NumPy arrays."""
    if k % 2 != 1:
        raise ValueError(f"the box must have an odd side, got {k}")
    if not use_fast(x):
        return F.average_pooling_2d(x, k, stride=1, pad=k // 2)
    return BoxSum(k).apply((x,))[0] * np.asarray(1.0 / (k * k), x.dtype)
