"""lib/kernels/sampler.py: the numba sampler and its gradients equal Chainer's, inside
and outside the frame, and numerical ones."""

import chainer
import chainer.functions as F
import numpy as np

from lib.kernels import sampler


def test_the_fast_sampler_equals_chainers():
    """Grids inside, on the border and well outside the frame (zeros there)."""
    rng = np.random.default_rng(0)
    x = rng.random((5, 3, 9, 7), dtype=np.float32)
    grid = rng.uniform(-1.6, 1.6, (5, 2, 6, 8)).astype(np.float32)
    grid[0, :, 0, :3] = [[-1.0], [1.0]]  # exactly the corner pixels' centres
    grid[1, :, 1, :2] = [[3.0], [-4.0]]  # far outside
    with chainer.no_backprop_mode():
        got = sampler.sample(x, grid).array
        want = F.spatial_transformer_sampler(x, grid).array
    assert (np.abs(grid) > 1).any() and np.all(got[1, :, 1, :2] == 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_its_gradients_equal_chainers_and_numerical_ones():
    """The frame's and the grid's gradients equal Chainer's backward (float32), and
    numerical ones (float64), the grid inside and outside the frame."""
    from chainer import gradient_check

    rng = np.random.default_rng(1)
    x = rng.random((3, 2, 7, 6), dtype=np.float32)
    grid = rng.uniform(-1.4, 1.4, (3, 2, 5, 4)).astype(np.float32)
    gy = rng.standard_normal((3, 2, 5, 4)).astype(np.float32)
    grads = {}
    for fast in (True, False):
        with chainer.using_config("fastconv", fast):
            xv, gv = chainer.Variable(x), chainer.Variable(grid)
            y = sampler.sample(xv, gv)
            y.grad = gy
            y.backward()
            grads[fast] = (y.array, xv.grad, gv.grad)
            assert isinstance(y.creator, sampler.BilinearSampler) == fast
    for got, want in zip(grads[True], grads[False]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    gradient_check.check_backward(
        lambda a, g: sampler.BilinearSampler().apply((a, g)),
        (x.astype(np.float64), grid.astype(np.float64)), gy.astype(np.float64),
        dtype=np.float64, atol=1e-5, rtol=1e-4, eps=1e-4,
    )  # fmt: skip
