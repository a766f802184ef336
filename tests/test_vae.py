"""lib.models.vae: shapes, config, the floored KL, the loss, training, snapshots."""

import json
import math

import chainer
import numpy as np
import pytest

from lib.kernels.fast_encoder import make_encoder
from lib.models.vae import PAPER_CONFIG, ConvVAE, VAELoss, floored_kl, kl_divergence

# A narrow VAE with the paper's geometry (64x64x3, the same kernels), for speed.
SMALL = {"enc_channels": [4, 8, 8, 16], "dense_size": 32, "dec_channels": [8, 8, 4], "z_size": 6}


def _frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def _eval(fn):
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        return fn()


def test_paper_shapes_and_config():
    vae = ConvVAE()
    assert vae.config() == PAPER_CONFIG
    json.dumps(vae.config())  # the sidecar must be plain JSON
    mu, logvar = _eval(lambda: vae.encode(_frames(5)))
    assert mu.shape == logvar.shape == (5, 32)
    assert mu.dtype == np.float32
    y = _eval(lambda: vae.decode(np.zeros((5, 32), np.float32)))
    assert y.shape == (5, 64, 64, 3)
    assert 0.0 <= float(y.array.min()) and float(y.array.max()) <= 1.0
    shapes = {name: p.shape for name, p in vae.namedparams()}
    assert shapes["/enc/0/W"] == (4, 4, 3, 32)
    assert shapes["/enc/3/W"] == (4, 4, 128, 256)
    assert shapes["/mu/W"] == (32, 1024)
    assert shapes["/dec_fc/W"] == (1024, 32)
    assert shapes["/dec/0/W"] == (1024, 5, 5, 128)
    assert shapes["/dec/3/W"] == (32, 6, 6, 3)


def test_config_rebuilds_the_same_model():
    vae = ConvVAE(**SMALL)
    again = ConvVAE(**json.loads(json.dumps(vae.config())))
    assert again.config() == vae.config()
    assert [p.shape for _, p in sorted(again.namedparams())] == [
        p.shape for _, p in sorted(vae.namedparams())
    ]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dec_kernels": [5, 5, 6]}, "one more deconv kernel"),
        ({"dec_kernels": [4, 5, 6, 6]}, "56-pixel"),
        ({"image_size": 16}, "16"),
    ],
)
def test_bad_sizes_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvVAE(**kwargs)


def test_to_float_is_exact():
    vae = ConvVAE(**SMALL)
    x = np.array([0, 1, 128, 255], np.uint8).reshape(1, 1, 4, 1)
    np.testing.assert_allclose(vae.to_float(x).ravel(), [0, 1 / 255, 128 / 255, 1], rtol=1e-7)
    f = np.full((1, 2, 2, 3), 0.25, np.float32)
    assert vae.to_float(f) is f
    with pytest.raises(TypeError, match="uint8 or float32"):
        vae.to_float(np.zeros((1, 2, 2, 3), np.int64))


def test_kl_and_its_floor_by_hand():
    mu = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]], np.float32)
    logvar = np.array([[0.0, 0.0], [0.0, 0.0], [math.log(2.0), 0.0]], np.float32)
    # KL = -0.5 * sum(1 + logvar - mu^2 - exp(logvar)):
    # row 0: 0; row 1: 0.5 * (9 + 16) = 12.5; row 2: -0.5 * (1 + ln 2 - 2) = 0.5 - ln(2) / 2.
    expected = [0.0, 12.5, 0.5 - math.log(2.0) / 2]
    np.testing.assert_allclose(kl_divergence(mu, logvar).array, expected, rtol=1e-6, atol=1e-7)
    # Floor: kl_tolerance * z = 0.5 * 2 = 1.0 nat per frame.
    np.testing.assert_allclose(floored_kl(mu, logvar, 0.5).array, [1.0, 12.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(floored_kl(mu, logvar, 0.0).array, expected, rtol=1e-6, atol=1e-7)
    # Below the floor the KL gives no gradient; above it the usual one (d/dmu = mu).
    mu_v, logvar_v = chainer.Variable(mu), chainer.Variable(logvar)
    chainer.functions.sum(floored_kl(mu_v, logvar_v, 0.5)).backward()
    np.testing.assert_allclose(mu_v.grad, [[0, 0], [3, 4], [0, 0]])
    np.testing.assert_allclose(logvar_v.grad[[0, 2]], 0)


def test_loss_reports_its_parts():
    vae = ConvVAE(**SMALL)
    x = _frames(4)
    loss = VAELoss(vae, kl_tolerance=0.5, rng=np.random.default_rng(7))
    reporter = chainer.Reporter()
    reporter.add_observer("main", loss)
    obs = {}
    with reporter.scope(obs):
        total = loss(x)
    parts = {k.split("/")[-1]: float(v.array) for k, v in obs.items()}
    assert set(parts) == {"loss", "rec", "kl", "kl_raw"}
    assert parts["loss"] == pytest.approx(float(total.array), rel=1e-6)
    assert parts["loss"] == pytest.approx(parts["rec"] + parts["kl"], rel=1e-6)
    assert parts["kl"] >= 0.5 * SMALL["z_size"] - 1e-5
    # Reconstruction: summed squared error per frame, mean over the batch; with
    # the same noise the model's own output gives the same number.
    rng = np.random.default_rng(7)
    with chainer.no_backprop_mode():
        target = x.astype(np.float32) / 255
        y, _, _ = vae(x, rng)
    rec = ((y.array - target) ** 2).sum() / 4
    assert parts["rec"] == pytest.approx(float(rec), rel=1e-5)


def test_loss_falls_with_adam():
    rng = np.random.default_rng(0)
    # Four fixed frames: flat colours with a bright square, like the env's discs.
    x = np.zeros((4, 64, 64, 3), np.uint8)
    for i in range(4):
        x[i] = rng.integers(0, 256, 3)
        x[i, 10 + 8 * i : 26 + 8 * i, 20:36] = 255
    np.random.seed(1)  # Chainer's initializers draw from NumPy's global generator
    vae = ConvVAE(**SMALL)
    loss = VAELoss(vae, rng=np.random.default_rng(1))
    optimizer = chainer.optimizers.Adam(alpha=1e-2)
    optimizer.setup(vae)
    losses = []
    for _ in range(60):
        optimizer.update(loss, x)
        losses.append(float(loss(x).array))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.5 * losses[0]


def test_snapshot_round_trip(tmp_path):
    vae = ConvVAE(**SMALL)
    optimizer = chainer.optimizers.Adam(alpha=1e-3)
    optimizer.setup(vae)
    optimizer.update(VAELoss(vae, rng=np.random.default_rng(0)), _frames(3))  # non-initial weights
    path = tmp_path / "vae.npz"
    chainer.serializers.save_npz(str(path), vae)
    again = ConvVAE(**vae.config())
    chainer.serializers.load_npz(str(path), again)
    x = _frames(3, seed=1)
    mu_a, lv_a = _eval(lambda: vae.encode(x))
    mu_b, lv_b = _eval(lambda: again.encode(x))
    np.testing.assert_array_equal(mu_a.array, mu_b.array)
    np.testing.assert_array_equal(lv_a.array, lv_b.array)
    np.testing.assert_array_equal(
        _eval(lambda: vae.decode(mu_a)).array, _eval(lambda: again.decode(mu_a)).array
    )
    assert not np.array_equal(mu_a.array, _eval(lambda: ConvVAE(**SMALL).encode(x))[0].array)


def test_fallback_path_matches_fast_path():
    """Chainer's own convolution (the GPU path) gives the same VAE outputs."""
    vae = ConvVAE(**SMALL)
    x = _frames(2)
    mu, logvar = _eval(lambda: vae.encode(x))
    y = _eval(lambda: vae.decode(mu))
    with chainer.using_config("fastconv", False):
        mu2, logvar2 = _eval(lambda: vae.encode(x))
        y2 = _eval(lambda: vae.decode(mu))
    np.testing.assert_allclose(mu.array, mu2.array, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logvar.array, logvar2.array, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y.array, y2.array, rtol=1e-5, atol=1e-5)


def test_sample_uses_the_given_generator():
    vae = ConvVAE(**SMALL)
    mu = np.ones((2, 6), np.float32)
    logvar = np.full((2, 6), math.log(4.0), np.float32)  # sigma 2
    z = vae.sample(mu, logvar, np.random.default_rng(3)).array
    eps = np.random.default_rng(3).standard_normal((2, 6), dtype=np.float32)
    np.testing.assert_allclose(z, 1 + 2 * eps, rtol=1e-6)


KEYPOINT = dict(SMALL, enc_channels=[4, 8], keypoints=5)


def test_keypoint_encoder_shapes_and_config():
    vae = ConvVAE(**KEYPOINT)
    assert vae.config()["keypoints"] == 5
    assert "keypoints" not in ConvVAE(**SMALL).config()  # the paper V's sidecar is unchanged
    again = ConvVAE(**json.loads(json.dumps(vae.config())))
    assert again.keypoints == 5
    shapes = {name: p.shape for name, p in vae.namedparams()}
    assert shapes["/kp/W"] == (5, 8)  # the 1x1 conv: 8 channels -> 5 keypoints
    assert shapes["/mu/W"] == (6, 10)  # z is linear in the 5 (x, y) pairs
    mu, logvar = _eval(lambda: vae.encode(_frames(3)))
    assert mu.shape == logvar.shape == (3, 6)
    with pytest.raises(ValueError, match="keypoints must be >= 0"):
        ConvVAE(**dict(KEYPOINT, keypoints=-1))


def test_a_keypoint_is_the_expected_position_of_its_softmax():
    vae = ConvVAE(**KEYPOINT)
    side = 14  # two 4x4 stride-2 convs of a 64x64 frame
    # One keypoint channel that fires only at row 2, column 11 of the map.
    h = np.zeros((1, side, side, 8), np.float32)
    h[0, 2, 11, 0] = 1.0
    vae.kp.W.array[:] = 0.0
    vae.kp.W.array[0, 0] = 1000.0  # sharp softmax: all mass on that position
    vae.kp.b.array[:] = 0.0
    xy = _eval(lambda: vae.keypoint_coordinates(h)).array[0]
    centre = lambda i: (i + 0.5) * 2.0 / side - 1.0
    assert xy[0] == pytest.approx(centre(11), abs=1e-5)  # x of keypoint 0
    assert xy[5] == pytest.approx(centre(2), abs=1e-5)  # y of keypoint 0
    # The other keypoints see a flat softmax: the map's centre.
    np.testing.assert_allclose(xy[[1, 2, 3, 4, 6, 7, 8, 9]], 0.0, atol=1e-6)


def _backward_once(vae):
    """One VAELoss backward pass on 4 frames; every gradient must be finite."""
    loss = VAELoss(vae, 0.5, rng=np.random.default_rng(0), object_weight=10.0)
    vae.cleargrads()
    loss(_frames(4)).backward()
    for name, p in vae.namedparams():
        assert np.isfinite(p.grad).all(), name


def test_keypoint_vae_trains_and_encodes_through_chainer():
    vae = ConvVAE(**KEYPOINT)
    _backward_once(vae)
    assert float(np.abs(vae.kp.W.grad).sum()) > 0
    encoder = make_encoder(vae)  # FastEncoder has no keypoint head: Chainer's path
    mu, _ = encoder(_frames(3))
    expect, _ = _eval(lambda: vae.encode(_frames(3)))
    np.testing.assert_allclose(mu, expect.array, rtol=1e-6)


SPATIAL = dict(SMALL, enc_channels=[4, 8, 8], spatial=3, z_size=6 * 6 * 3)


def test_spatial_latent_shapes_config_and_checks():
    vae = ConvVAE(**SPATIAL)
    assert vae.config()["spatial"] == 3
    assert "spatial" not in ConvVAE(**SMALL).config()  # the paper V's sidecar is unchanged
    assert ConvVAE(**json.loads(json.dumps(vae.config()))).spatial == 3
    shapes = {name: p.shape for name, p in vae.namedparams()}
    assert shapes["/mu/W"] == shapes["/logvar/W"] == (3, 8)  # the 1x1 conv: 8 channels -> 3
    assert shapes["/dec_fc/W"] == (32, 108)  # the paper's decoder, from the whole map
    mu, logvar = _eval(lambda: vae.encode(_frames(2)))
    assert mu.shape == logvar.shape == (2, 108)
    with pytest.raises(ValueError, match="z_size 108, not 100"):
        ConvVAE(**dict(SPATIAL, z_size=100))
    with pytest.raises(ValueError, match="not both"):
        ConvVAE(**dict(SPATIAL, keypoints=2))
    with pytest.raises(ValueError, match="spatial must be >= 0"):
        ConvVAE(**dict(SPATIAL, spatial=-1))


def test_a_spatial_latent_cell_reads_only_its_own_place():
    # z is row-major (row, column, latent): changing the frame's top-left corner moves
    # the top-left cell's latents and leaves the bottom-right cell's exactly alone.
    vae = ConvVAE(**SPATIAL)
    frames = _frames(1)
    changed = frames.copy()
    changed[0, :8, :8] = 255 - changed[0, :8, :8]
    a, b = (_eval(lambda f=f: vae.encode(f))[0].array.reshape(6, 6, 3) for f in (frames, changed))
    assert np.abs(a[0, 0] - b[0, 0]).max() > 1e-4
    np.testing.assert_array_equal(a[5, 5], b[5, 5])
    # latent_cell names each z index's place: the latents that moved include cell (0, 0)'s
    moved = np.flatnonzero(np.abs(a - b).ravel() > 1e-4)
    assert {vae.latent_cell(d)[:2] for d in moved} >= {(0, 0)}
    assert vae.latent_cell(6 * 3 * 2 + 4 * 3 + 1) == (2, 4, 1) and vae.latent_cell(107) == (5, 5, 2)
    assert ConvVAE(z_size=8).latent_cell(3) is None
    # Each cell's latents are the same linear map of that cell's features.
    h = _frames(1).astype(np.float32) / 255.0
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        for conv in vae.enc:
            h = conv(h)
        cell = h.array[0, 2, 4]
    mu = _eval(lambda: vae.encode(_frames(1)))[0].array.reshape(6, 6, 3)
    np.testing.assert_allclose(
        mu[2, 4], vae.mu.W.array @ cell + vae.mu.b.array, rtol=1e-5, atol=1e-6
    )


def test_spatial_vae_trains_and_the_fast_encoder_agrees():
    vae = ConvVAE(**SPATIAL)
    _backward_once(vae)
    encoder = make_encoder(vae)
    assert type(encoder).__name__ == "FastEncoder"  # its per-cell head
    mu, logvar = encoder(_frames(5))
    expect = _eval(lambda: vae.encode(_frames(5)))
    np.testing.assert_allclose(mu, expect[0].array, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logvar, expect[1].array, rtol=1e-4, atol=1e-5)
