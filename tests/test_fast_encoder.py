"""lib.fast_encoder: agreement with ConvVAE.encode, Winograd layers, threads, fallback."""

import chainer
import numpy as np
import pytest

from lib import fast_encoder as fe
from lib.vae import ConvVAE


def _vae(seed=0, **config):
    """A V with random (non-zero) biases, so every term of each layer counts."""
    vae = ConvVAE(**config)
    rng = np.random.default_rng(seed)
    for param in vae.params():
        if param.name == "b":
            param.array[...] = rng.normal(0.0, 0.1, param.shape)
    return vae


def _chainer_encode(vae, frames):
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        mu, logvar = vae.encode(frames)
    return mu.array, logvar.array


def _frames(n, size=64, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _close(actual, expected, tol=1e-5):
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("n", [1, 5, 33, 70])
def test_agrees_with_chainer_encode(n):
    vae = _vae()
    frames = _frames(n)
    mu, logvar = fe.FastEncoder(vae)(frames)
    ref_mu, ref_logvar = _chainer_encode(vae, frames)
    assert mu.shape == logvar.shape == (n, 32)
    assert mu.dtype == logvar.dtype == np.float32
    _close(mu, ref_mu)
    _close(logvar, ref_logvar)


def test_every_layer_after_the_first_is_winograd_at_paper_size():
    layers = fe.FastEncoder(_vae()).layers
    assert [layer.u is not None for layer in layers] == [False, True, True, True]


@pytest.mark.parametrize("side", [6, 7, 14, 15, 31])
def test_winograd_layer_equals_direct_convolution(side):
    """4x4 stride-2 conv (relu) on inputs whose output side is even (Winograd)
    and odd (im2col fallback), against a float64 direct sum."""
    rng = np.random.default_rng(side)
    n_c, n_o = 5, 7
    w = rng.normal(0, 0.3, (4, 4, n_c, n_o)).astype(np.float32)
    b = rng.normal(0, 0.3, n_o).astype(np.float32)
    x = rng.normal(0, 1, (3, side, side, n_c)).astype(np.float32)
    y = fe._Layer(w, b, 2, first=False)(x)
    n_out = (side - 4) // 2 + 1
    ref = np.zeros((3, n_out, n_out, n_o))
    for i in range(4):
        for j in range(4):
            patch = x[:, i : i + 2 * n_out - 1 : 2, j : j + 2 * n_out - 1 : 2].astype(np.float64)
            ref += patch @ w[i, j].astype(np.float64)
    ref = np.maximum(ref + b, 0.0)
    assert y.shape == ref.shape
    _close(y, ref, 2e-6)


def test_winograd_weights_of_a_single_tap():
    """A kernel with one non-zero tap gives the transform G g G^T by hand."""
    w = np.zeros((4, 4, 1, 1), np.float32)
    w[0, 0, 0, 0] = 1.0  # tap (a, b) = (0, 0), space-to-depth channel (p, q) = (0, 0)
    u = fe.winograd_weights(w).reshape(3, 3, 4)
    g_col = np.array([1.0, 1.0, 0.0])  # G @ [1, 0]
    np.testing.assert_array_equal(u[:, :, 0], np.outer(g_col, g_col))
    assert not u[:, :, 1:].any()


def test_results_do_not_depend_on_threads():
    vae = _vae()
    frames = _frames(70)
    one = fe.FastEncoder(vae, threads=1)(frames)
    two = fe.FastEncoder(vae, threads=2)(frames)
    three = fe.FastEncoder(vae, threads=3)(frames)
    for a, b, c in zip(one, two, three):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_chunks_are_independent():
    """A frame's result in a batch of CHUNK + k frames equals its result when
    its chunk is encoded alone."""
    vae = _vae()
    frames = _frames(fe.CHUNK + 3)
    enc = fe.FastEncoder(vae, chunk=fe.CHUNK)
    whole, _ = enc(frames)
    first, _ = enc(frames[: fe.CHUNK])
    tail, _ = enc(frames[fe.CHUNK :])
    np.testing.assert_array_equal(whole, np.concatenate([first, tail]))


def test_other_kernel_sizes_fall_back_to_im2col():
    vae = _vae(enc_kernel=5)
    enc = fe.FastEncoder(vae)
    assert all(layer.u is None for layer in enc.layers)
    frames = _frames(4)
    _close(enc(frames)[0], _chainer_encode(vae, frames)[0])


def test_weights_are_a_copy():
    vae = _vae()
    frames = _frames(2)
    enc = fe.FastEncoder(vae)
    before = enc(frames)[0]
    vae.enc[1].W.array[...] *= 2.0
    np.testing.assert_array_equal(enc(frames)[0], before)
    assert not np.allclose(fe.FastEncoder(vae)(frames)[0], before)


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 64, 64, 3), np.float32),
        np.zeros((2, 32, 32, 3), np.uint8),
        np.zeros((64, 64, 3), np.uint8),
    ],
    ids=["float", "wrong-size", "no-batch-axis"],
)
def test_bad_frames_are_refused(frames):
    with pytest.raises(ValueError, match="uint8 frames"):
        fe.FastEncoder(_vae())(frames)


def test_make_encoder_follows_the_fastconv_switch():
    vae = _vae()
    frames = _frames(3)
    assert isinstance(fe.make_encoder(vae), fe.FastEncoder)
    with chainer.using_config("fastconv", False):
        enc = fe.make_encoder(vae)
    assert not isinstance(enc, fe.FastEncoder)
    mu, _ = enc(frames)
    _close(mu, fe.FastEncoder(vae)(frames)[0])
