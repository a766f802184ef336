"""lib.kernels.fast_lstm: the whole-sequence LSTM node against Chainer's own LSTM."""

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest
from chainer import gradient_check

from lib.kernels import fast_lstm


def _inputs(rng, batch=3, steps=5, n_in=4, hidden=6, dtype=np.float64, scale=0.5):
    """Random (x, w_x, w_h, b, h0, c0) for an LSTM of the given sizes."""
    return (
        rng.standard_normal((batch, steps, n_in)).astype(dtype),
        (scale * rng.standard_normal((4 * hidden, n_in))).astype(dtype),
        (scale * rng.standard_normal((4 * hidden, hidden))).astype(dtype),
        (scale * rng.standard_normal(4 * hidden)).astype(dtype),
        rng.standard_normal((batch, hidden)).astype(dtype),
        rng.standard_normal((batch, hidden)).astype(dtype),
    )


def _blocked(w, hidden):
    """L.LSTM's interleaved gate rows (a0 i0 f0 o0 a1 ...) -> blocked (a.. i.. f.. o..)."""
    return w.reshape((hidden, 4) + w.shape[1:]).swapaxes(0, 1).reshape(w.shape)


def _link_loop(link, x, h0, c0):
    """hs of a Python loop of `L.LSTM` (with a given initial state) over (B, T, I)."""
    link.set_state(chainer.Variable(c0), chainer.Variable(h0))
    return F.stack([link(x[:, t]) for t in range(x.shape[1])], axis=1)


def test_forward_and_grads_equal_chainer_lstm_link():
    rng = np.random.default_rng(0)
    batch, steps, n_in, hidden = 4, 9, 5, 7
    link = L.LSTM(n_in, hidden)
    x = rng.standard_normal((batch, steps, n_in)).astype(np.float32)
    h0 = rng.standard_normal((batch, hidden)).astype(np.float32)
    c0 = rng.standard_normal((batch, hidden)).astype(np.float32)
    link.upward.b.array[:] = rng.standard_normal(4 * hidden)
    gy = rng.standard_normal((batch, steps, hidden)).astype(np.float32)

    hs_ref = _link_loop(link, x, h0, c0)
    link.cleargrads()
    F.sum(hs_ref * gy).backward()

    w_x = chainer.Parameter(_blocked(link.upward.W.array, hidden))
    w_h = chainer.Parameter(_blocked(link.lateral.W.array, hidden))
    b = chainer.Parameter(_blocked(link.upward.b.array, hidden))
    hs, h, c = fast_lstm.fast_lstm(x, w_x, w_h, b, h0, c0)
    np.testing.assert_allclose(hs.array, hs_ref.array, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(h.array, hs_ref.array[:, -1], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(c.array, link.c.array, atol=1e-5, rtol=1e-5)

    F.sum(hs * gy).backward()
    np.testing.assert_allclose(w_x.grad, _blocked(link.upward.W.grad, hidden), atol=1e-4)
    np.testing.assert_allclose(w_h.grad, _blocked(link.lateral.W.grad, hidden), atol=1e-4)
    np.testing.assert_allclose(b.grad, _blocked(link.upward.b.grad, hidden), atol=1e-4)


def test_equals_f_lstm_loop_float32_with_saturation():
    # Large weights drive the gates into saturation, where the float32 tanh
    # approximation must still agree with Chainer's.
    rng = np.random.default_rng(1)
    args = _inputs(rng, batch=5, steps=6, n_in=3, hidden=8, dtype=np.float32, scale=4.0)
    ours = fast_lstm.fast_lstm(*args)
    ref = fast_lstm.lstm_loop(*args)
    for a, r in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a.array, r.array, atol=1e-5, rtol=1e-5)
    assert np.all(np.abs(ours[0].array) <= 1.0)


@pytest.mark.parametrize("outputs", ["all", "hs_only", "state_only"])
def test_check_backward(outputs):
    rng = np.random.default_rng(2)
    args = _inputs(rng)
    hs_shape = args[0].shape[:2] + (args[2].shape[1],)
    state_shape = args[4].shape

    def f(*inputs):
        hs, h, c = fast_lstm.FastLSTM().apply(inputs)
        if outputs == "hs_only":
            return hs
        if outputs == "state_only":
            return h, c
        return hs, h, c

    gys = {
        "all": (hs_shape, state_shape, state_shape),
        "hs_only": (hs_shape,),
        "state_only": (state_shape, state_shape),
    }[outputs]
    grads = tuple(rng.standard_normal(s) for s in gys)
    gradient_check.check_backward(
        f, args, grads if len(grads) > 1 else grads[0], dtype=np.float64, atol=1e-6, rtol=1e-5
    )


def test_data_without_grad_gives_same_weight_grads():
    rng = np.random.default_rng(3)
    x, *params = _inputs(rng, dtype=np.float32)
    results = []
    for x_in in (x, chainer.Variable(x)):
        ps = [chainer.Variable(p.copy()) for p in params]
        hs, _, _ = fast_lstm.fast_lstm(x_in, *ps)
        F.sum(hs * hs).backward()
        results.append([p.grad for p in ps])
    assert isinstance(x_in, chainer.Variable) and x_in.grad is not None
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def test_truncated_bptt_chunks_equal_one_pass():
    rng = np.random.default_rng(4)
    x, w_x, w_h, b, h0, c0 = _inputs(rng, steps=8, dtype=np.float32)
    hs_full, h_full, c_full = fast_lstm.fast_lstm(x, w_x, w_h, b, h0, c0)
    hs_a, h, c = fast_lstm.fast_lstm(x[:, :3], w_x, w_h, b, h0, c0)
    h.unchain_backward()
    c.unchain_backward()
    hs_b, h, c = fast_lstm.fast_lstm(x[:, 3:], w_x, w_h, b, h, c)
    np.testing.assert_allclose(
        np.concatenate([hs_a.array, hs_b.array], axis=1), hs_full.array, atol=1e-6
    )
    np.testing.assert_allclose(h.array, h_full.array, atol=1e-6)
    np.testing.assert_allclose(c.array, c_full.array, atol=1e-6)


def test_zero_initial_state_by_default():
    rng = np.random.default_rng(5)
    x, w_x, w_h, b, h0, c0 = _inputs(rng, dtype=np.float32)
    default = fast_lstm.fast_lstm(x, w_x, w_h, b)
    explicit = fast_lstm.fast_lstm(x, w_x, w_h, b, np.zeros_like(h0), np.zeros_like(c0))
    for a, e in zip(default, explicit, strict=True):
        np.testing.assert_array_equal(a.array, e.array)


def test_numpy_step_equals_sequence():
    rng = np.random.default_rng(6)
    x, w_x, w_h, b, h0, c0 = _inputs(rng, steps=4, dtype=np.float32)
    hs, _, c_end = fast_lstm.fast_lstm(x, w_x, w_h, b, h0, c0)
    h, c = h0, c0
    for t in range(x.shape[1]):
        h, c = fast_lstm.lstm_step_numpy(x[:, t], h, c, w_x, w_h, b)
        np.testing.assert_allclose(h, hs.array[:, t], atol=1e-6)
    np.testing.assert_allclose(c, c_end.array, atol=1e-6)


def test_nan_input_propagates():
    rng = np.random.default_rng(7)
    x, *params = _inputs(rng, dtype=np.float32)
    x[0, 1, 0] = np.nan
    hs = fast_lstm.fast_lstm(x, *params)[0].array
    assert np.isnan(hs[0, 1:]).all()
    assert np.isfinite(hs[1:]).all() and np.isfinite(hs[0, 0]).all()
