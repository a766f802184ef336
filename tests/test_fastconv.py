"""lib.kernels.fastconv: gradients, agreement with Chainer's own links, chunking, fallback."""

import os
import signal
import threading

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest
from chainer import gradient_check

from lib.kernels import fastconv as fc
from lib.kernels import runtime

ACTS = {None: lambda h: h, "relu": F.relu, "sigmoid": F.sigmoid}


def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _close(actual, expected, tol=1e-5):
    """Equal to `tol`, relative to the largest magnitude of `expected`."""
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * np.abs(expected).max())


# ---------------------------------------------------------------------------
# gradient checks (float64, small sizes)
# ---------------------------------------------------------------------------


def _check_backward(node_class, stride, activation, x, w, b, gy):
    """Chainer's numerical gradient check of a fresh `node_class` per call, in float64."""
    gradient_check.check_backward(
        lambda x, w, b: node_class(stride, activation).apply((x, w, b)),
        (x, w, b),
        gy,
        dtype=np.float64,
        atol=1e-6,
        rtol=1e-5,
    )


# (B, H, W, C, k, O, stride) of each node's gradient check; conv draws from seed 0,
# deconv from seed 1
CHECK_CASES = [
    (fc.Conv2DNHWC, (2, 9, 8, 3, 4, 5, 2)),
    (fc.Conv2DNHWC, (3, 6, 6, 2, 3, 2, 1)),
    (fc.Deconv2DNHWC, (2, 3, 4, 3, 4, 2, 2)),
    (fc.Deconv2DNHWC, (2, 1, 1, 5, 5, 3, 2)),
    (fc.Deconv2DNHWC, (1, 3, 2, 2, 3, 2, 1)),
]


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
@pytest.mark.parametrize("node_class, shape", CHECK_CASES)
def test_check_backward(activation, node_class, shape):
    n_b, n_h, n_w, n_c, k, n_o, stride = shape
    conv = node_class is fc.Conv2DNHWC
    rng = np.random.RandomState(0 if conv else 1)
    x = rng.uniform(-1, 1, (n_b, n_h, n_w, n_c))
    w = rng.uniform(-1, 1, (k, k, n_c, n_o) if conv else (n_c, k, k, n_o))
    b = rng.uniform(-1, 1, n_o)
    if conv:
        out = ((n_h - k) // stride + 1, (n_w - k) // stride + 1)
    else:
        out = ((n_h - 1) * stride + k, (n_w - 1) * stride + k)
    gy = rng.uniform(-1, 1, (n_b, *out, n_o))
    _check_backward(node_class, stride, activation, x, w, b, gy)


@pytest.mark.parametrize("dilate, stride", [(2, 1), (3, 1), (2, 2)])
def test_dilated_conv_backward(dilate, stride):
    """The dilated window's gradients (its own col2im) against numerical ones."""
    rng = np.random.RandomState(4)
    x = rng.uniform(-1, 1, (2, 9, 8, 3))
    w = rng.uniform(-1, 1, (3, 3, 3, 2))
    b = rng.uniform(-1, 1, 2)
    span = dilate * 2 + 1
    gy = rng.uniform(-1, 1, (2, (9 - span) // stride + 1, (8 - span) // stride + 1, 2))
    gradient_check.check_backward(
        lambda x, w, b: fc.Conv2DNHWC(stride, "relu", dilate).apply((x, w, b)),
        (x, w, b), gy, dtype=np.float64, atol=1e-6, rtol=1e-5,
    )  # fmt: skip


@pytest.mark.parametrize("dilate", [1, 2, 8])
def test_dilated_conv_matches_chainer(dilate):
    """A padded ("same") dilated 3 x 3 convolution, forward and gradients, equals
    Chainer's `F.convolution_2d(..., dilate=)` (its fallback)."""
    rng = np.random.default_rng(5)
    x = rng.random((3, 20, 20, 9), dtype=np.float32)
    w = rng.standard_normal((3, 3, 9, 24)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    pad = ((0, 0), (dilate, dilate), (dilate, dilate), (0, 0))
    gy = rng.standard_normal((3, 20, 20, 24)).astype(np.float32)
    out = {}
    for fast in (True, False):
        with chainer.using_config("fastconv", fast):
            xv, wv, bv = chainer.Variable(x), chainer.Variable(w), chainer.Variable(b)
            y = fc.conv2d_nhwc(F.pad(xv, pad, "constant"), wv, bv, 1, "relu", dilate=dilate)
            y.grad = gy
            y.backward()
            out[fast] = (y.array, xv.grad, wv.grad, bv.grad)
    assert out[True][0].shape == (3, 20, 20, 24)
    for got, want in zip(out[True], out[False]):
        _close(got, want)


# ---------------------------------------------------------------------------
# agreement with L.Convolution2D / L.Deconvolution2D (float32, 1e-5)
# ---------------------------------------------------------------------------


def _run_pair(ref, link, x_nchw, activation, rng):
    """Forward + backward through Chainer's link (NCHW) and ours (NHWC)."""
    ref.cleargrads()
    link.cleargrads()
    xr = chainer.Variable(x_nchw)
    yr = ACTS[activation](ref(xr))
    gy = rng.standard_normal(yr.shape).astype(np.float32)
    yr.grad = gy
    yr.backward()
    xf = chainer.Variable(_nhwc(x_nchw))
    yf = link(xf)
    yf.grad = _nhwc(gy)
    yf.backward()
    return xr, yr, xf, yf


def _check_against_chainer(ref, link, x, activation, rng, to_chainer):
    """The NHWC link's output and gradients equal Chainer's NCHW layer's (same bias)."""
    link.b.array[:] = ref.b.array
    xr, yr, xf, yf = _run_pair(ref, link, x, activation, rng)
    _close(_nchw(yf.array), yr.array)
    _close(_nchw(xf.grad), xr.grad)
    _close(to_chainer(link.W.grad), ref.W.grad)
    _close(link.b.grad, ref.b.grad)


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("n_c,n_o,size", [(3, 32, 64), (32, 64, 31), (5, 7, 12)])
def test_conv_matches_chainer(activation, n_c, n_o, size):
    rng = np.random.default_rng(2)
    ref = L.Convolution2D(n_c, n_o, 4, 2)
    ref.b.array[:] = rng.standard_normal(n_o)
    link = fc.ConvolutionNHWC(n_c, n_o, 4, 2, activation)
    link.W.array[:] = fc.from_chainer_conv(ref.W.array)
    x = rng.random((3, n_c, size, size), dtype=np.float32)
    _check_against_chainer(ref, link, x, activation, rng, fc.to_chainer_conv)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
@pytest.mark.parametrize("n_c,n_o,k,size", [(64, 32, 6, 13), (32, 3, 6, 30), (16, 8, 5, 1)])
def test_deconv_matches_chainer(activation, n_c, n_o, k, size):
    rng = np.random.default_rng(3)
    ref = L.Deconvolution2D(n_c, n_o, k, 2)
    ref.b.array[:] = rng.standard_normal(n_o)
    link = fc.DeconvolutionNHWC(n_c, n_o, k, 2, activation)
    link.W.array[:] = fc.from_chainer_deconv(ref.W.array)
    x = rng.standard_normal((3, n_c, size, size), dtype=np.float32)
    _check_against_chainer(ref, link, x, activation, rng, fc.to_chainer_deconv)


# ---------------------------------------------------------------------------
# chunking, inference path, fallback, layouts
# ---------------------------------------------------------------------------


def _grads(link, x, gy):
    link.cleargrads()
    xv = chainer.Variable(x)
    y = link(xv)
    y.grad = gy
    y.backward()
    return y.array, xv.grad, link.W.grad.copy(), link.b.grad.copy()


def _layer_and_data(kind, rng, small, large, batch, side):
    """A stride-2 layer (`kind` "conv": 4 x 4, relu, `small` -> `large` channels;
    "deconv": `large` x `large`, sigmoid, `large` -> `small`), a batch of `side` x `side`
    inputs and an output gradient."""
    if kind == "conv":
        link = fc.ConvolutionNHWC(small, large, 4, 2, "relu")
        x = rng.random((batch, side, side, small), dtype=np.float32)
    else:
        link = fc.DeconvolutionNHWC(large, small, large, 2, "sigmoid")
        x = rng.standard_normal((batch, side, side, large), dtype=np.float32)
    return link, x, rng.standard_normal(link(x).shape, dtype=np.float32)


@pytest.mark.parametrize("kind", ["conv", "deconv"])
def test_chunked_equals_unchunked(kind, monkeypatch):
    """Batches split into cache-sized chunks (and over threads) give the same result."""
    rng = np.random.default_rng(4)
    side = 14 if kind == "conv" else 5
    link, x, gy = _layer_and_data(kind, rng, small=4, large=6, batch=7, side=side)
    whole = _grads(link, x, gy)
    monkeypatch.setattr(fc, "_CHUNK_BYTES", 1)  # one frame per chunk
    chunked = _grads(link, x, gy)
    with chainer.no_backprop_mode():
        inferred = link(x).array
    for a, b in zip(chunked, whole):
        _close(a, b, 1e-6)
    _close(inferred, whole[0], 1e-6)


@pytest.mark.parametrize("kind", ["conv", "deconv"])
def test_fallback_matches_fast_path(kind):
    """`fastconv = False` (the GPU path) computes the same function."""
    rng = np.random.default_rng(5)
    side = 10 if kind == "conv" else 3
    link, x, gy = _layer_and_data(kind, rng, small=3, large=5, batch=2, side=side)
    fast = _grads(link, x, gy)
    with chainer.using_config("fastconv", False):
        slow = _grads(link, x, gy)
    for a, b in zip(fast, slow):
        _close(a, b)


def test_weight_layouts_round_trip():
    w = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(fc.to_chainer_conv(fc.from_chainer_conv(w)), w)
    np.testing.assert_array_equal(fc.to_chainer_deconv(fc.from_chainer_deconv(w)), w)
    # (O, C, kh, kw)[o, c, i, j] lands at (kh, kw, C, O)[i, j, c, o].
    assert fc.from_chainer_conv(w)[3, 1, 2, 1] == w[1, 2, 3, 1]
    assert fc.from_chainer_deconv(w)[1, 3, 1, 2] == w[1, 2, 3, 1]


def test_initial_weights_follow_chainer_layout():
    """An initialW given in Chainer's layout is permuted into ours."""
    rng = np.random.default_rng(6)
    w_conv = rng.standard_normal((5, 3, 4, 4)).astype(np.float32)
    w_deconv = rng.standard_normal((3, 5, 6, 6)).astype(np.float32)
    conv = fc.ConvolutionNHWC(3, 5, 4, initialW=w_conv)
    deconv = fc.DeconvolutionNHWC(3, 5, 6, initialW=w_deconv)
    np.testing.assert_array_equal(conv.W.array, fc.from_chainer_conv(w_conv))
    np.testing.assert_array_equal(deconv.W.array, fc.from_chainer_deconv(w_deconv))
    np.testing.assert_array_equal(conv.b.array, 0)
    # The default draws have Chainer's LeCun scale: std sqrt(1 / fan_in).
    big = fc.ConvolutionNHWC(64, 128, 4)
    assert abs(big.W.array.std() - np.sqrt(1 / (64 * 16))) < 0.002


def test_bad_activation_is_rejected():
    with pytest.raises(ValueError, match="activation"):
        fc.conv2d_nhwc(
            np.zeros((1, 4, 4, 1), np.float32),
            np.zeros((4, 4, 1, 1), np.float32),
            np.zeros(1, np.float32),
            activation="tanh",
        )


@pytest.mark.parametrize("threads", [None, 1, 2, 3])  # None: kernel_threads(), as the kernels
@pytest.mark.parametrize("n", [0, 1, 2, 7])
def test_parallel_covers_every_item_once(n, threads):
    seen = np.zeros(n, int)
    callers = set()

    def mark(lo, hi):
        seen[lo:hi] += 1
        callers.add(threading.get_ident())

    runtime.parallel_ranges(mark, n, threads)
    np.testing.assert_array_equal(seen, 1)
    if threads is not None and n > 0:  # the caller takes the first part, the pool the rest
        assert (len(callers) >= 2) == (min(n, threads) >= 2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_parallel_works_in_a_forked_child():
    """A child forked after the pool started gets a pool of its own (no hang)."""
    runtime.parallel_ranges(lambda lo, hi: None, 4, threads=2)
    pid = os.fork()
    if pid == 0:  # child: exit code 0 on success, killed by SIGALRM on a hang
        signal.alarm(20)
        seen = np.zeros(4, int)

        def mark(lo, hi):
            seen[lo:hi] += 1

        runtime.parallel_ranges(mark, 4, threads=2)
        os._exit(0 if (seen == 1).all() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
