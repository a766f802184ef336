"""lib/kernels/sampler.py: the numba sampler equals Chainer's, inside and outside the
frame, and the graph still goes through Chainer's."""

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


def test_with_a_graph_it_is_chainers_sampler():
    """Building a graph, the gradient reaches the frame (Chainer's backward)."""
    x = chainer.Variable(np.ones((1, 1, 4, 4), np.float32))
    y = sampler.sample(x, np.zeros((1, 2, 2, 2), np.float32))
    F.sum(y).backward()
    assert y.creator is not None and x.grad.sum() == 4.0
