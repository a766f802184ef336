"""M's pixel mover (lib/models/pixel_mover.py) and 04b_train_mover.py: the composite
ego-motion against the one-step warp, the untrained mover as the warp, a velocity field
moving the frame by hand, gradients against numerical ones, the robot's still body, V's
reading of the dream, and the script: training, exact resume, refusals."""

import json

import numpy as np
import pytest
from chainer import gradient_check
from cli_helpers import assert_refused, bad_flags, one_line_error, run, run_here

from lib.env import socnavenv as sn
from lib.kernels.splat import splat
from lib.models import ego_warp, pixel_mover, saved_models
from lib.models.pixel_mover import PixelMover, to_planes

STILL_ACTION = [-1.0, 0.0]  # no advance, no turn


def room_frames(n=6, seed=0, humans=5):
    config = sn.EnvConfig(n_humans=humans)
    sim = sn.SocNavSim(n, config)
    sim.reset_seeds(np.arange(n) + seed)
    return sim.observe_images()


@pytest.mark.parametrize("side", [6, 64])
def test_composite_sources_of_one_action_are_the_warps_positions(side):
    """One action: the fractional positions equal those `warp_taps` interpolates
    (inside the view); no action: the identity."""
    offsets = ego_warp.grid_offsets(side, 8.0)
    actions = np.random.default_rng(side).uniform(-1, 1, (7, 2))
    rows, cols = ego_warp.composite_sources(actions[:, None], offsets)
    index, weight = ego_warp.warp_taps(actions, offsets)
    fi = index[..., 0] // side + weight[..., 2] + weight[..., 3]
    fj = index[..., 0] % side + weight[..., 1] + weight[..., 3]
    inside = (rows >= 0) & (rows <= side - 1) & (cols >= 0) & (cols <= side - 1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(fi[inside], rows[inside], atol=1e-5)
    np.testing.assert_allclose(fj[inside], cols[inside], atol=1e-5)
    rows, cols = ego_warp.composite_sources(np.zeros((2, 0, 2)), offsets)
    np.testing.assert_allclose(rows[0], np.repeat(np.arange(side), side), atol=1e-12)
    np.testing.assert_allclose(cols[0], np.tile(np.arange(side), side), atol=1e-12)


def test_two_actions_compose_as_two_warps():
    """The composite of two actions samples where two successive one-step warps would."""
    offsets = ego_warp.grid_offsets(64, 8.0)
    a = np.array([[[0.5, 0.8], [1.0, -0.4]]])
    rows, cols = ego_warp.composite_sources(a, offsets)
    r1, c1 = ego_warp.composite_sources(a[:, 1:], offsets)  # frame 2 -> frame 1
    r0, c0 = ego_warp.composite_sources(a[:, :1], offsets)  # frame 1 -> frame 0 (grid)
    # frame 1's position (r1, c1) carried to frame 0: interpolate the grid map (linear)
    grid_r, grid_c = r0[0].reshape(64, 64), c0[0].reshape(64, 64)
    i, j = int(r1[0, 2000]), int(c1[0, 2000])
    wi, wj = r1[0, 2000] - i, c1[0, 2000] - j
    bil = lambda g: ((1 - wi) * (1 - wj) * g[i, j] + (1 - wi) * wj * g[i, j + 1]
                     + wi * (1 - wj) * g[i + 1, j] + wi * wj * g[i + 1, j + 1])  # fmt: skip
    assert rows[0, 2000] == pytest.approx(bil(grid_r), abs=1e-6)
    assert cols[0, 2000] == pytest.approx(bil(grid_c), abs=1e-6)


def test_the_untrained_mover_is_the_ego_motion_warp():
    """u starts at 0: standing still gives the frame itself, and one action gives the
    pixel warp of `ego_warp` (away from the robot, whose body stays)."""
    frames = room_frames()
    mover = PixelMover()
    n = len(frames)
    still = np.tile([STILL_ACTION], (n, 1))
    same = mover.dream(frames, frames, still, np.tile(still[:, None], (1, 3, 1)))
    np.testing.assert_array_equal(same, np.repeat(frames[:, None], 3, axis=1))
    actions = np.random.default_rng(1).uniform(-1, 1, (n, 1, 2))
    moved = mover.dream(frames, frames, still, actions)[:, 0].astype(np.float32)
    taps = ego_warp.warp_taps(actions[:, 0], ego_warp.grid_offsets(64, 8.0))
    warped = ego_warp.warp_maps(frames.reshape(n, -1, 3).astype(np.float32), taps)
    warped = warped.reshape(frames.shape)
    assert np.abs(moved - warped).max() <= 1.0  # the same bilinear sample, rounded


def test_a_velocity_field_moves_the_frame_by_k_steps_of_it():
    """A constant field of one column a step: with the robot standing still, the dream
    of frame t + k is frame t shifted k columns to the right (the left edge repeated)."""
    frames = room_frames(2)
    mover = PixelMover()
    cur = to_planes(frames)
    u = np.zeros((2, 2, 64, 64), np.float32)
    u[:, 1] = 1.0
    for k in (1, 3):
        acts = np.tile([[STILL_ACTION]], (2, k, 1))
        out, seen = mover.render(u, cur, acts)
        assert seen.min() == 1.0  # standing still: every source is inside frame t
        np.testing.assert_allclose(out.array[..., 10:50, 20:60], cur[..., 10:50, 20 - k : 60 - k],
                                   atol=1e-5)  # fmt: skip


def test_the_render_gradient_against_numerical_ones():
    mover = PixelMover(image_size=12, view_size=1.5, channels=3)
    rng = np.random.default_rng(0)
    cur = rng.uniform(0, 1, (2, 3, 12, 12)).astype(np.float32)
    u = rng.uniform(-0.7, 0.7, (2, 2, 12, 12)).astype(np.float32)
    acts = rng.uniform(-1, 1, (2, 2, 2))
    gy = rng.normal(size=(2, 3, 12, 12)).astype(np.float32)
    gradient_check.check_backward(
        lambda v: mover.render(v, cur, acts)[0], u, gy, eps=1e-3, atol=2e-2, rtol=2e-2
    )


def test_the_loss_gradient_reaches_the_net():
    """The loss's gradient wrt the net's weights against a numerical difference."""
    np.random.seed(0)
    mover = PixelMover(image_size=10, view_size=1.25, channels=3)
    rng = np.random.default_rng(1)
    cur = rng.uniform(0, 1, (2, 3, 10, 10)).astype(np.float32)
    prev = rng.uniform(0, 1, (2, 3, 10, 10)).astype(np.float32)
    acts = rng.uniform(-1, 1, (2, 2, 2))
    targets = rng.uniform(0, 1, (2, 2, 3, 10, 10)).astype(np.float32)
    mover.out.W.array[:] = rng.normal(0, 0.3, mover.out.W.shape).astype(np.float32)
    loss = mover.loss(cur, prev, acts, targets)
    mover.cleargrads()
    loss.backward()
    w = mover.out.W
    grad = w.grad[0, 0, 0, 0]
    eps = 1e-2
    values = []
    for sign in (1, -1):
        w.array[0, 0, 0, 0] += sign * eps
        values.append(float(mover.loss(cur, prev, acts, targets).array))
        w.array[0, 0, 0, 0] -= sign * eps
    assert grad == pytest.approx((values[0] - values[1]) / (2 * eps), rel=0.05, abs=1e-6)
    assert mover.layers[0].W.grad is not None and np.abs(mover.layers[0].W.grad).sum() > 0


def test_still_pixels_stay_and_are_painted_over_in_what_moves():
    """`set_still` finds the pixels that never change; the dream copies them from frame
    t and moves a frame whose still pixels (and their rim) are painted over."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (50, 16, 16, 3)).astype(np.uint8)
    frames[:, 7:9, 7:9] = [40, 90, 235]
    mover = PixelMover(image_size=16, view_size=2.0, channels=2)
    mover.set_still(frames)
    want = np.zeros((16, 16), np.float32)
    want[7:9, 7:9] = 1
    np.testing.assert_array_equal(mover.still, want)
    flat = np.full((1, 3, 16, 16), 0.5, np.float32)
    np.testing.assert_allclose(mover.erased(flat), flat)  # a uniform frame stays itself
    u = np.zeros((1, 2, 16, 16), np.float32)
    u[:, 0] = 2.0  # two rows a step
    cur = to_planes(frames[:1])
    out, _ = mover.render(u, cur, np.array([[STILL_ACTION]]))
    np.testing.assert_allclose(out.array[..., 7:9, 7:9], cur[..., 7:9, 7:9])
    # two rows below the body, the moving part shows the paint, not the body's colour
    painted = mover.erased(cur)[..., 7:9, 7:9]
    np.testing.assert_allclose(out.array[..., 10:11, 7:9], painted[..., :1, :], atol=1e-6)


def test_the_latent_dream_of_a_standing_robot_is_vs_reading_of_the_frame():
    """An untrained mover and standing-still actions: V's z of the dream of t + k is V's
    z of frame t (the real frames held in `data.mu`'s order)."""
    from lib.data.latents import LatentEpisodes
    from lib.models.vae import ConvVAE, encode_frames

    frames = room_frames(4)
    vae = ConvVAE(z_size=8)
    mu = encode_frames(vae, frames)[0]
    data = LatentEpisodes({
        "mu": mu, "logvar": mu, "action": np.tile([STILL_ACTION], (2, 1)).astype(np.float32),
        "reward": np.zeros(2, np.float32), "done": np.array([False, True]),
        "frame_offsets": np.array([0, 3]), "step_offsets": np.array([0, 2]),
        "files": np.array(["a"]), "outcome": np.zeros(2, np.int8),
    })  # fmt: skip
    dream = pixel_mover.LatentDream(PixelMover(), vae, frames[:3])
    for k in (1, 4):
        np.testing.assert_allclose(dream.z(data, np.array([0, 1]), k), mu[[0, 1]], atol=1e-5)


def test_splat_by_hand_and_its_gradients():
    """Each value lands on the four pixels around its target with bilinear weights
    (corners outside dropped); gradients in values and positions against numerical."""
    rng = np.random.default_rng(0)
    n, c, p, s = 2, 3, 10, 6
    values = rng.normal(size=(n, c, p))
    rows, cols = rng.uniform(-0.5, 5.5, (n, p)), rng.uniform(-0.5, 5.5, (n, p))
    want = np.zeros((n, c, s * s))
    for i in range(n):
        for q in range(p):
            i0, j0 = int(np.floor(rows[i, q])), int(np.floor(cols[i, q]))
            a, b = rows[i, q] - i0, cols[i, q] - j0
            for ii, jj, w in ((i0, j0, (1 - a) * (1 - b)), (i0, j0 + 1, (1 - a) * b),
                              (i0 + 1, j0, a * (1 - b)), (i0 + 1, j0 + 1, a * b)):  # fmt: skip
                if 0 <= ii < s and 0 <= jj < s:
                    want[i, :, ii * s + jj] += w * values[i, :, q]
    np.testing.assert_allclose(splat(values, rows, cols, s).array, want, atol=1e-12)
    gy = rng.normal(size=(n, c, s * s))
    gradient_check.check_backward(
        lambda v, r, q: splat(v, r, q, s), (values, rows, cols), gy, eps=1e-4, atol=1e-4, rtol=1e-4
    )


def test_composite_targets_invert_the_sources():
    offsets = ego_warp.grid_offsets(64, 8.0)
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 4, 2))
    rows, cols = ego_warp.composite_sources(actions, offsets)
    m = ego_warp.composite_targets(actions, offsets)
    back_r = m[:, 0, 0, None] * rows + m[:, 0, 1, None] * cols + m[:, 0, 2, None]
    back_c = m[:, 1, 0, None] * rows + m[:, 1, 1, None] * cols + m[:, 1, 2, None]
    np.testing.assert_allclose(back_r, np.repeat(np.arange(64.0), 64)[None].repeat(3, 0), atol=1e-9)
    np.testing.assert_allclose(back_c, np.tile(np.arange(64.0), 64)[None].repeat(3, 0), atol=1e-9)


def test_the_splat_motion_without_a_moving_layer_is_the_warp():
    frames = room_frames(3)
    sampled, splatted = PixelMover(), PixelMover(motion="splat")
    splatted.out.b.array[2] = -60.0  # alpha 0: nothing moves on its own
    still = np.tile([STILL_ACTION], (3, 1))
    actions = np.random.default_rng(2).uniform(-1, 1, (3, 4, 2))
    np.testing.assert_array_equal(
        splatted.dream(frames, frames, still, actions),
        sampled.dream(frames, frames, still, actions),
    )


def test_the_splat_motion_carries_the_moving_layer_whole():
    """alpha 1 everywhere, one column a step, the robot standing: frame t + k is frame t
    shifted k columns right; with the field varying inside a person the splat still
    moves each pixel by its own velocity (no sample-back stretching)."""
    frames = room_frames(2)
    mover = PixelMover(motion="splat")
    cur = to_planes(frames)
    field = np.zeros((2, 3, 64, 64), np.float32)
    field[:, 1] = 1.0
    field[:, 2] = 60.0  # alpha 1
    for k in (1, 3):
        out, _ = mover.render(field, cur, np.tile([[STILL_ACTION]], (2, k, 1)))
        np.testing.assert_allclose(out.array[..., 10:50, 20:60], cur[..., 10:50, 20 - k : 60 - k],
                                   atol=1e-5)  # fmt: skip


def test_the_splat_render_gradient_against_numerical_ones():
    mover = PixelMover(image_size=10, view_size=1.25, channels=3, motion="splat")
    rng = np.random.default_rng(3)
    cur = rng.uniform(0, 1, (2, 3, 10, 10)).astype(np.float64)
    field = np.concatenate([rng.uniform(-0.7, 0.7, (2, 2, 10, 10)),
                            rng.normal(0, 1, (2, 1, 10, 10))], axis=1)  # fmt: skip
    acts = rng.uniform(-1, 1, (2, 2, 2))
    gy = rng.normal(size=(2, 3, 10, 10))
    gradient_check.check_backward(
        lambda f: mover.render(f, cur, acts)[0], field, gy, eps=1e-4, atol=5e-3, rtol=5e-3,
        dtype=np.float64,
    )  # fmt: skip


def test_bad_mover_settings_are_refused():
    with pytest.raises(ValueError, match="view_size"):
        PixelMover(view_size=0)
    with pytest.raises(ValueError):
        PixelMover(channels=0)
    with pytest.raises(ValueError, match="motion"):
        PixelMover(motion="teleport")


# -- 04b_train_mover.py ----------------------------------------------------------------


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("mover")
    run("02_generate_rnn_data.py", "--episodes", 4, "--testepisodes", 1, "--max-steps", 30,
        "--workers", 1, "--data-dir", root)  # fmt: skip
    return root


def train(d, *extra, check=True):
    args = ("--epochs", 2, "--batches", 3, "--batch-size", 2, "--horizon", 3, "--channels", 3,
            "--data-dir", d, *extra)  # fmt: skip
    return run("04b_train_mover.py", *args) if check else run_here("04b_train_mover.py", *args)


def copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_04b_trains_the_mover_and_resumes_exactly(episodes, tmp_path):
    a = copy(episodes, tmp_path / "a")
    out = train(a)
    assert "epoch 2: loss" in out.stdout and "the warp alone" in out.stdout
    log = (a / "models" / "mover_log.csv").read_text().splitlines()
    assert log[0] == "epoch,train_loss,heldout_loss,heldout_warp_loss,seconds" and len(log) == 3
    side = json.loads((a / "models" / "mover.json").read_text())
    assert side["config"] == {"image_size": 64, "view_size": 8.0, "channels": 3, "motion": "sample"}
    assert side["epochs"] == 2
    mover = saved_models.load_mover(str(a))
    assert isinstance(mover, PixelMover) and mover.still.sum() > 0  # the robot's body
    assert (a / "results" / "mover.png").stat().st_size > 0
    # interrupted after one batch, then resumed: the same weights, bit for bit
    b = copy(episodes, tmp_path / "b")
    stopped = train(b, "--max-iterations", 1)
    assert "continue with --resume" in stopped.stdout
    train(b, "--resume")
    with np.load(a / "models" / "mover.npz") as wa, np.load(b / "models" / "mover.npz") as wb:
        assert sorted(wa.files) == sorted(wb.files) and len(wa.files) > 5
        for k in wa.files:
            np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    # a finished run trains on with a larger --epochs
    more = train(b, "--resume", "--epochs", 3)
    assert "epoch 3: loss" in more.stdout
    assert json.loads((b / "models" / "mover.json").read_text())["epochs"] == 3
    # resuming with another setting is refused in one line, nothing overwritten
    before = (b / "models" / "mover.npz").read_bytes()
    refused = train(b, "--resume", "--horizon", 4, check=False)
    assert "other flags" in one_line_error(refused) and refused.returncode != 0
    assert (b / "models" / "mover.npz").read_bytes() == before


@pytest.mark.parametrize("args, words", bad_flags("04b_train_mover.py"))
def test_04b_refuses_bad_flags(args, words, episodes):
    assert_refused("04b_train_mover.py", args, words, episodes)


def test_04b_refuses_missing_episodes(tmp_path):
    refused = train(tmp_path, check=False)
    assert refused.returncode != 0 and "02_generate_rnn_data.py" in one_line_error(refused)


def test_saved_models_has_no_mover_without_one(tmp_path):
    assert saved_models.load_mover(str(tmp_path)) is None


def test_the_fast_field_equals_chainers_and_so_do_its_gradients():
    """On the CPU the field runs NHWC through `fastconv`'s dilated convolution: its
    values and the weights' gradients equal Chainer's own layers' (fastconv off)."""
    import chainer

    rng = np.random.default_rng(7)
    mover = PixelMover(image_size=24, motion="splat")
    for link in mover.links():
        for param in link.params(include_uninit=False):
            param.array[...] = rng.normal(0, 0.3, param.shape)
    cur, prev = (rng.random((2, 3, 24, 24), dtype=np.float32) for _ in range(2))
    out = {}
    for fast in (True, False):
        mover.cleargrads()
        with chainer.using_config("fastconv", fast):
            u = mover.field(cur, prev)
            chainer.functions.sum(u * u).backward()
        out[fast] = (u.array, [p.grad.copy() for p in mover.params()])
    assert np.abs(out[False][0]).max() > 0.1  # a field that moves
    scale = np.abs(out[False][0]).max()
    np.testing.assert_allclose(out[True][0], out[False][0], rtol=1e-3, atol=1e-4 * scale)
    for got, want in zip(out[True][1], out[False][1]):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


def test_the_numba_splat_equals_the_generic_one():
    """The numba kernels (NumPy) and the bincount/gather path (CuPy's, here forced by
    fastconv off) give the same splat and the same gradients, corners outside included."""
    import chainer

    rng = np.random.default_rng(11)
    values = rng.standard_normal((3, 2, 40)).astype(np.float32)
    rows, cols = (rng.uniform(-1.5, 8.5, (3, 40)).astype(np.float32) for _ in range(2))
    gy = rng.standard_normal((3, 2, 64)).astype(np.float32)
    out = {}
    for fast in (True, False):
        with chainer.using_config("fastconv", fast):
            v, r, c = (chainer.Variable(a) for a in (values, rows, cols))
            y = splat(v, r, c, 8)
            y.grad = gy
            y.backward()
            out[fast] = (y.array, v.grad, r.grad, c.grad)
    for got, want in zip(out[True], out[False]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
