"""lib.kernels.fast_encoder: agreement with ConvVAE.encode, Winograd layers, threads, fallback."""

import chainer
import numpy as np
import pytest

from lib.kernels import fast_encoder as fe
from lib.models.vae import ConvVAE, encode_frames


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


def test_winograd_tiles_at_paper_size():
    """Outputs 30 (first conv, uint8 GEMM), 14 (F(2x2)), 6 (F(3x3)), 2 (F(2x2))."""
    enc = fe.FastEncoder(_vae())
    assert enc.sides == [30, 14, 6, 2]
    assert [layer.tile(side) for layer, side in zip(enc.layers, enc.sides)] == [None, 2, 3, 2]


@pytest.mark.parametrize("side", [6, 7, 14, 15, 20, 23, 31])
def test_winograd_layer_equals_direct_convolution(side):
    """4x4 stride-2 conv (relu) with output sides that take F(2x2) (2, 14),
    F(3x3) (6, 9) and neither (5, 11, im2col), against a float64 direct sum."""
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


@pytest.mark.parametrize("m", [2, 3])
def test_winograd_transforms_by_definition(m):
    """Each F(m, 2) in one dimension: A^T [(G g) * (B^T d)] is the correlation."""
    bt, g_mat, at = fe.WINOGRAD[m]
    rng = np.random.default_rng(m)
    d, g = rng.normal(size=m + 1), rng.normal(size=2)
    expected = [d[i] * g[0] + d[i + 1] * g[1] for i in range(m)]
    np.testing.assert_allclose(at @ ((g_mat @ g) * (bt @ d)), expected, rtol=1e-6)


def test_general_kernels_match_the_written_out_ones():
    """The F(m, 2) kernels for any m, run with m = 2, equal the F(2x2) ones."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 14, 14, 3)).astype(np.float32)
    bt, _, at = fe.WINOGRAD[2]
    n_tiles = 2 * 3 * 3
    v_fast, v_any = (np.empty((9, n_tiles, 12), np.float32) for _ in range(2))
    fe._winograd_input(x, v_fast, 0)
    fe._winograd_input_any(x, bt, v_any, 0)
    np.testing.assert_allclose(v_any, v_fast, atol=1e-6)
    prod = rng.normal(size=(9, n_tiles, 5)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    y_fast, y_any = (np.empty((2, 6, 6, 5), np.float32) for _ in range(2))
    fe._winograd_output(prod, b, y_fast)
    fe._winograd_output_any(prod, at, b, y_any)
    np.testing.assert_allclose(y_any, y_fast, atol=1e-6)


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
    assert all(layer.tile(side) is None for layer, side in zip(enc.layers, enc.sides))
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


def test_no_frames_give_empty_latents():
    mu, logvar = fe.FastEncoder(_vae())(np.zeros((0, 64, 64, 3), np.uint8))
    assert mu.shape == logvar.shape == (0, 32)


def test_make_encoder_follows_the_fastconv_switch():
    vae = _vae()
    frames = _frames(3)
    assert isinstance(fe.make_encoder(vae), fe.FastEncoder)
    with chainer.using_config("fastconv", False):
        enc = fe.make_encoder(vae)
    assert not isinstance(enc, fe.FastEncoder)
    mu, _ = enc(frames)
    _close(mu, fe.FastEncoder(vae)(frames)[0])


def test_encode_frames_reuses_a_given_encoder():
    """Callers that encode many episodes (the latent cache) build the encoder
    once: building one costs ~20 ms, more than encoding a short episode."""

    vae = _vae()
    frames = _frames(7)
    calls = []
    enc = fe.FastEncoder(vae)

    def counting(batch):
        calls.append(len(batch))
        return enc(batch)

    mu, logvar = encode_frames(vae, frames, batch_size=4, encoder=counting)
    assert calls == [4, 3]
    np.testing.assert_array_equal(mu, np.concatenate([enc(frames[:4])[0], enc(frames[4:])[0]]))
    assert logvar.shape == (7, 32)
