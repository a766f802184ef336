"""lib/kernels/box.py: the running-sum box mean equals Chainer's average pooling, and
its gradient equals Chainer's and numerical ones."""

import chainer
import chainer.functions as F
import numpy as np
import pytest
from chainer import gradient_check

from lib.kernels.box import BoxSum, box_mean


@pytest.mark.parametrize("k", [1, 3, 7])
def test_the_box_mean_equals_average_pooling(k):
    rng = np.random.default_rng(k)
    x = rng.random((2, 3, 9, 11), dtype=np.float32)
    gy = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    out = {}
    for fast in (True, False):
        with chainer.using_config("fastconv", fast):
            v = chainer.Variable(x)
            y = box_mean(v, k)
            y.grad = gy
            y.backward()
            out[fast] = (y.array, v.grad)
    want = F.average_pooling_2d(x, k, stride=1, pad=k // 2).array
    np.testing.assert_allclose(out[False][0], want)
    for got, ref in zip(out[True], out[False]):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_the_box_sum_gradient_against_numerical_ones():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 6, 5))
    gradient_check.check_backward(
        lambda a: BoxSum(3).apply((a,)), x, rng.standard_normal(x.shape), dtype=np.float64
    )


def test_an_even_box_is_refused():
    with pytest.raises(ValueError, match="odd side"):
        box_mean(np.zeros((1, 1, 4, 4), np.float32), 4)
