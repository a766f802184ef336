"""Controllers in the pixel mover's dream (lib/control/pixel_dream.py): the order of a
step by hand, re-anchoring, dreams independent of their batch, and refusals."""

import numpy as np
import pytest

from lib.control import pixel_dream as pd
from lib.control.agent import DreamLedger
from lib.env import socnavenv as sn
from lib.models.controller import n_params
from lib.models.mdn_rnn import MDNRNN
from lib.models.pixel_mover import PixelMover
from lib.models.vae import ConvVAE, encode_frames

Z, H = 8, 16


def room_frames(n, seed=0):
    sim = sn.SocNavSim(n, sn.EnvConfig(n_humans=5))
    sim.reset_seeds(np.arange(n) + seed)
    return sim.observe_images()


def models(outcome=False, seed=0):
    np.random.seed(seed)  # Chainer's initialisers draw from NumPy's global generator
    rnn = MDNRNN(z_size=Z, hidden_size=H, reward_head=not outcome, done_head=not outcome,
                 outcome_head=outcome)  # fmt: skip
    return rnn, ConvVAE(z_size=Z)


def standing(count):
    """Controllers whose action is always "no advance, no turn" (tanh(-20), tanh(0))."""
    params = np.zeros((count, n_params(Z, H)), np.float32)
    params[:, -2] = -20.0
    return params


def starts_of(frames, prev=None, first=False):
    n = len(frames)
    return pd.Starts(
        prev=frames if prev is None else prev,
        cur=frames,
        a_prev=np.tile([[-1.0, 0.0]], (n, 1)).astype(np.float32),
        z_prev=np.zeros((n, Z), np.float32),
        first=np.full(n, first),
    )


@pytest.mark.parametrize("outcome", [False, True])
def test_a_standing_robot_in_a_still_dream_is_m_on_one_frame_by_hand(outcome):
    """An untrained mover and a robot standing still: every dreamed frame is the start
    frame, and the returns are M's heads stepped by hand on V's z of it, after M has
    read z_{t-1} and a_{t-1}."""
    rnn, vae = models(outcome)
    frames = room_frames(3)
    seen = []
    returns, lengths = pd.pixel_dream_rollouts(
        rnn, PixelMover(), vae, standing(1), np.zeros(3, int), starts_of(frames), max_steps=12,
        on_frame=lambda rows, f: seen.append((rows, f)),
    )  # fmt: skip
    # a soft dream (outcome head) runs on past the step its length counts
    assert len(seen) > 1 and (len(seen) >= lengths.max() if outcome else len(seen) == lengths.max())
    for rows, f in seen:
        np.testing.assert_array_equal(f, frames[rows])

    state = rnn.step(np.zeros((3, Z), np.float32), starts_of(frames).a_prev).state
    want_returns, want_lengths = standing_by_hand(rnn, encode_frames(vae, frames)[0], state, 12)
    np.testing.assert_allclose(returns, want_returns, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(lengths, want_lengths)


def standing_by_hand(rnn, z, state, steps):
    """M stepped by hand from `state` on the same z and the standing action: the
    (returns, lengths) its heads give (`DreamLedger`)."""
    n = len(z)
    ledger = DreamLedger(rnn, n)
    a = np.tile(np.float32([np.tanh(-20.0), 0.0]), (n, 1))
    for _ in range(steps):
        out = rnn.step(z, a, state)
        state = out.state
        if not ledger.record(out, np.arange(n)).any():
            break
    return ledger.result()


def test_an_episodes_first_frame_gives_m_nothing_before_it():
    """`first`: M starts from its initial state (it reads no z_{t-1} or a_{t-1})."""
    rnn, vae = models()
    frames = room_frames(2)
    other = room_frames(2, seed=5)  # a t - 1 unlike t
    got = pd.pixel_dream_rollouts(rnn, PixelMover(), vae, standing(1), np.zeros(2, int),
                                  starts_of(frames, other, first=True), max_steps=5)  # fmt: skip
    want = standing_by_hand(rnn, encode_frames(vae, frames)[0], rnn.initial_state(2), 5)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    # without `first`, M has read z_{t-1} and a_{t-1}: another state, other returns
    other_start = pd.pixel_dream_rollouts(rnn, PixelMover(), vae, standing(1), np.zeros(2, int),
                                          starts_of(frames, other), max_steps=5)  # fmt: skip
    assert not np.allclose(other_start[0], got[0])


class ShiftMover(PixelMover):
    """A mover whose field is one column a step to the right everywhere, whatever it
    reads (so re-anchoring keeps the motion)."""

    def field(self, cur, prev):
        u = np.zeros((len(cur), 2, self.image_size, self.image_size), np.float32)
        u[:, 1] = 1.0
        import chainer

        return chainer.Variable(u)


def test_reanchoring_keeps_the_motion():
    """With a field of one column a step, the frame k steps on is the start frame moved
    k columns (away from the left edge, which repeats), re-anchored every step or
    every 8."""
    rnn, vae = models()
    frames = room_frames(1)
    seen = {1: [], 8: []}
    for every in (1, 8):
        pd.pixel_dream_rollouts(
            rnn, ShiftMover(), vae, standing(1), np.zeros(1, int), starts_of(frames),
            max_steps=10, reanchor=every, on_frame=lambda rows, f, e=every: seen[e].append(f[0]),
        )  # fmt: skip
    k = min(len(seen[1]), len(seen[8]))
    assert k >= 4, "M ended the dream too soon for the test"
    for j in range(1, k):
        want = frames[0][:, : 64 - j]
        for every in (1, 8):
            diff = np.abs(seen[every][j][:, j:].astype(int) - want.astype(int))
            assert np.percentile(diff, 99) <= 1, (every, j)


@pytest.mark.parametrize("motion", ["sample", "splat"])
def test_dreams_do_not_depend_on_their_batch(motion):
    """Dreams that end early leave the batch (with what the mover prepared for their
    anchor); the others' returns are what each gets alone (random controllers, a random
    M, a random mover)."""
    rnn, vae = models(seed=3)
    frames = room_frames(4, seed=2)
    params = np.random.default_rng(0).normal(0, 0.5, (2, n_params(Z, H))).astype(np.float32)
    which = np.array([0, 1, 0, 1])
    starts = starts_of(frames, room_frames(4, seed=9))
    mover = PixelMover(motion=motion)
    rng = np.random.default_rng(1)
    mover.out.W.array[...] = rng.normal(0, 0.05, mover.out.W.shape)  # a field that moves
    together = pd.pixel_dream_rollouts(rnn, mover, vae, params, which, starts,
                                       max_steps=30, reanchor=3)  # fmt: skip
    assert len(set(together[1])) > 1  # some dreams end before others
    for i in range(4):
        one = pd.Starts(*(x[i : i + 1] for x in starts))
        alone = pd.pixel_dream_rollouts(rnn, mover, vae, params, which[i : i + 1], one,
                                         max_steps=30, reanchor=3)  # fmt: skip
        np.testing.assert_allclose(together[0][i], alone[0][0], rtol=1e-4, atol=1e-5)
        assert together[1][i] == alone[1][0]


def test_episode_starts_take_frames_zero_and_one():
    """A dream starts at an episode's second frame, after its first action."""
    from lib.data.latents import LatentEpisodes

    frames = np.arange(7)[:, None, None, None] * np.ones((7, 2, 2, 3), np.uint8)
    data = LatentEpisodes({
        "mu": np.arange(7 * Z, dtype=np.float32).reshape(7, Z), "logvar": np.zeros((7, Z)),
        "action": np.arange(10, dtype=np.float32).reshape(5, 2),
        "reward": np.zeros(5, np.float32), "done": np.array([0, 0, 1, 0, 1], bool),
        "frame_offsets": np.array([0, 4, 7]), "step_offsets": np.array([0, 3, 5]),
        "files": np.array(["a", "b"]), "outcome": np.zeros(5, np.int8),
    })  # fmt: skip
    two = pd.first_two_frames(frames, data)
    assert two[:, :, 0, 0, 0].tolist() == [[0, 1], [4, 5]]
    s = pd.episode_starts(two, data, [1, 0, 1])
    assert s.prev[:, 0, 0, 0].tolist() == [4, 0, 4] and s.cur[:, 0, 0, 0].tolist() == [5, 1, 5]
    np.testing.assert_array_equal(s.a_prev, [[6, 7], [0, 1], [6, 7]])
    np.testing.assert_array_equal(s.z_prev, data.mu[[4, 0, 4]])
    assert not s.first.any()


def test_bad_dreams_are_refused():
    rnn, vae = models()
    frames = room_frames(2)
    with pytest.raises(ValueError, match="reanchor must be >= 1"):
        pd.pixel_dream_rollouts(rnn, PixelMover(), vae, standing(1), np.zeros(2, int),
                                starts_of(frames), reanchor=0)  # fmt: skip
    with pytest.raises(ValueError, match="1 starts for 2 dreams"):
        pd.pixel_dream_rollouts(rnn, PixelMover(), vae, standing(1), np.zeros(2, int),
                                starts_of(frames[:1]))  # fmt: skip
    with pytest.raises(ValueError, match="reward and done heads"):
        pd.pixel_dream_rollouts(MDNRNN(z_size=Z, hidden_size=H), PixelMover(), vae,
                                standing(1), np.zeros(2, int), starts_of(frames))  # fmt: skip


# ---------------------------------------------------------------------------
# 07 --dream --mover: C trained in the pixel dream
# ---------------------------------------------------------------------------
def _07(d, *extra, check=True):
    from cli_helpers import run, run_here

    args = ("--dream", "--popsize", 4, "--trials", 2, "--eval-every", 1, "--eval-episodes", 2,
            "--max-steps", 20, "--group-size", 2, "--data-dir", d, *extra)  # fmt: skip
    return (run if check else run_here)("07_train_controller.py", *args)


def test_07_trains_c_in_the_pixel_dream_whatever_the_workers(tiny_models, tmp_path):
    """07 --dream --mover scores candidates in the pixel dream (the sidecar says so), and
    the search does not depend on --workers."""
    import shutil

    from cli_helpers import run

    from lib.control.es import CMAES
    from lib.models import saved_models

    d = tmp_path / "d"
    shutil.copytree(tiny_models, d)
    run("04b_train_mover.py", "--epochs", 1, "--batches", 2, "--batch-size", 2, "--horizon", 2,
        "--channels", 2, "--data-dir", d)  # fmt: skip
    means = []
    for workers in (1, 2):
        proc = _07(d, "--mover", "--epochs", 2, "--workers", workers, "--overwrite")
        assert "in the pixel dream" in proc.stdout
        es, _ = CMAES.resume(str(d / "models" / "controller_es.npz"), n_params(8, 16))
        means.append(es.mean)
    np.testing.assert_array_equal(means[0], means[1])
    _, side = saved_models.load_controller(str(d))
    assert side["pixel_dream"] and side["dream"]
    with np.load(d / "models" / "dream_starts.npz") as z:
        assert z["cur"].shape[1:] == (64, 64, 3) and len(z["cur"]) == len(z["mu"])
    # without --mover, the same data trains in M's own dream
    m_dream = _07(d, "--epochs", 1, "--workers", 1, "--name", "m_dream")
    assert "pixel dream" not in m_dream.stdout and "inside M" in m_dream.stdout


def test_07_refuses_a_mover_without_a_dream_or_a_mover(tiny_models):
    """One line each, and nothing written."""
    from cli_helpers import one_line_error, run_here

    before = sorted(p.name for p in (tiny_models / "models").iterdir())
    line = one_line_error(
        run_here("07_train_controller.py", "--mover", "--epochs", 1, "--data-dir", tiny_models)
    )
    assert "--mover is a kind of dream: add --dream" in line
    line = one_line_error(_07(tiny_models, "--mover", "--epochs", 1, check=False))
    assert "mover.npz" in line and "04b_train_mover.py" in line
    assert sorted(p.name for p in (tiny_models / "models").iterdir()) == before


def test_07_refuses_a_mover_of_another_frame_size(tiny_models, tmp_path):
    import shutil

    from cli_helpers import one_line_error

    from lib import training

    d = tmp_path / "d"
    shutil.copytree(tiny_models, d)
    mover = PixelMover(image_size=32)
    training.save_model(str(d / "models" / "mover.npz"), mover, {"config": mover.config()})
    before = sorted(p.name for p in (d / "models").iterdir())
    line = one_line_error(_07(d, "--mover", "--epochs", 1, check=False))
    assert "32-pixel frames, V reads 64-pixel ones" in line and "04b_train_mover.py" in line
    assert sorted(p.name for p in (d / "models").iterdir()) == before
