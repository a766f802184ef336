"""The map M (lib/models/map_rnn.py) and the ego-motion warp it rests on
(lib/models/ego_warp.py): geometry against the simulator's own frames, the model's
shapes and gradients, its step against its training graph, and 04 --arch map end to
end (training, exact resume, refusals, 06 drawing it)."""

import csv
import json
import shutil
from types import SimpleNamespace

import chainer
import numpy as np
import pytest
from chainer import gradient_check
from cli_helpers import one_line_error, run, run_here

from lib.control.fitness import dream_starts
from lib.data import latents, rnn_data
from lib.diagnostics import open_loop as ol
from lib.diagnostics import world_model as wm
from lib.env import socnavenv as sn
from lib.kernels import sparse_warp
from lib.models import ego_warp, saved_models
from lib.models.map_rnn import MapRNN, build_rnn
from lib.models.mdn_rnn import MDNRNN, MDNRNNLoss, sample
from lib.models.rollout_loss import rollout_loss, rollout_starts
from lib.models.vae import SPATIAL_ENC_CHANNELS, ConvVAE


def frames_and_actions(n=12, seed=0):
    """Frames of rooms without people before and after one random action."""
    config = sn.EnvConfig(n_humans=0)
    sim = sn.SocNavSim(n, config)
    sim.reset_seeds(np.arange(n) + seed)
    before = sim.observe_images().astype(np.float32)
    actions = np.random.default_rng(seed).uniform(-1, 1, (n, 2))
    sim.step(actions)
    return before, sim.observe_images().astype(np.float32), actions, config


def warp_frames(frames, actions, view_size):
    n, s = frames.shape[:2]
    taps = ego_warp.warp_taps(actions, ego_warp.grid_offsets(s, view_size))
    return ego_warp.warp_maps(frames.reshape(n, s * s, 3), taps).reshape(frames.shape)


def test_the_warp_moves_an_empty_room_as_the_simulator_does():
    """Warping frame t by the action gives frame t + 1 of a room without people: the
    error left (bilinear blur, the robot drawn at the centre) is below copying's in every
    room and under a third of it on average, and a turn the other way is worse than not
    moving at all."""
    before, after, actions, config = frames_and_actions()
    inner = (slice(None), slice(8, 56), slice(8, 56))  # away from the replicated edge
    err = lambda x: np.abs(x[inner] - after[inner]).mean(axis=(1, 2, 3))
    warped = err(warp_frames(before, actions, config.view_size))
    copied = err(before)
    mirrored = err(warp_frames(before, actions * [1, -1], config.view_size))
    assert (warped < copied).all() and warped.mean() < 0.35 * copied.mean(), (warped, copied)
    assert (mirrored[np.abs(actions[:, 1]) > 0.3] > copied[np.abs(actions[:, 1]) > 0.3]).all()


def test_the_warp_matrix_by_hand():
    offsets = ego_warp.grid_offsets(4, 4.0)  # 1 m cells at 1.5, 0.5, -0.5, -1.5
    np.testing.assert_allclose(offsets, [1.5, 0.5, -0.5, -1.5])
    still = ego_warp.warp_matrix(np.array([[-1.0, 0.0]]), offsets)[0]
    np.testing.assert_array_equal(still, np.eye(16))  # no advance, no turn
    # Advancing 0.14 m (full speed, 0.1 s): each new cell shows 0.14 of a cell further
    # forward, i.e. the old cell above it by 0.14 (the top row repeats the edge).
    move = ego_warp.warp_matrix(np.array([[1.0, 0.0]]), offsets)[0]
    d = sn.MAX_ADVANCE * sn.TIMESTEP
    assert move[5, 5] == pytest.approx(1 - d) and move[5, 1] == pytest.approx(d)
    assert move[1, 1] == pytest.approx(1.0)  # the top row: nothing further to show
    turn = ego_warp.warp_matrix(np.array([[-1.0, 1.0], [-1.0, 0.3]]), offsets)
    np.testing.assert_allclose(turn.sum(axis=2), 1.0, atol=1e-6)
    assert (turn >= 0).all()


@pytest.mark.parametrize("side", [3, 6, 14])
def test_the_taps_are_the_dense_warp_and_scatter_its_transpose(side):
    """`warp_maps` (four taps a cell, gathered) gives the dense matrix's product, and
    `sparse_warp.scatter` its transpose's, for any motion (edges, turns, standing)."""
    rng = np.random.default_rng(side)
    actions = np.concatenate([rng.uniform(-1, 1, (7, 2)), [[-1.0, 0.0], [1.0, 1.0]]])
    offsets = ego_warp.grid_offsets(side, 8.0)
    index, weight = ego_warp.warp_taps(actions, offsets)
    assert index.dtype == np.int32 and weight.dtype == np.float32
    assert index.shape == weight.shape == (9, side * side, 4)
    assert ((0 <= index) & (index < side * side)).all()
    assert (np.sort(index, axis=2)[..., 1:] > np.sort(index, axis=2)[..., :-1]).all()
    np.testing.assert_allclose(weight.sum(axis=2), 1.0, atol=1e-6)
    dense = ego_warp.warp_matrix(actions, offsets)
    assert (dense != 0).sum(axis=2).max() <= 4
    maps = rng.standard_normal((9, side * side, 5)).astype(np.float32)
    got = ego_warp.warp_maps(maps, (index, weight))
    np.testing.assert_allclose(got, dense @ maps, rtol=1e-6, atol=1e-6)
    back = sparse_warp.scatter(maps, index, weight)
    np.testing.assert_allclose(back, np.swapaxes(dense, 1, 2) @ maps, rtol=1e-5, atol=1e-6)
    # the GPU's array-operation paths, run here on NumPy (np.add.at for cupyx.scatter_add)
    np.testing.assert_allclose(
        sparse_warp.gather_array_ops(np, maps, index, weight), got, rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        sparse_warp.scatter_array_ops(np, np.add.at, maps, index, weight),
        back,
        rtol=1e-5,
        atol=1e-6,
    )


def test_the_warp_node_backpropagates_the_transpose():
    rng = np.random.default_rng(0)
    index, weight = ego_warp.warp_taps(rng.uniform(-1, 1, (3, 2)), ego_warp.grid_offsets(4, 4.0))
    maps = rng.standard_normal((3, 16, 2))
    gy = rng.standard_normal((3, 16, 2))
    gradient_check.check_backward(
        lambda m: sparse_warp.warp(m, index, weight.astype(np.float64)),
        maps,
        gy,
        dtype=np.float64,
        atol=1e-7,
        rtol=1e-6,
    )


def test_a_spatial_vs_map_is_where_its_cells_look():
    """V's three valid 4x4 stride-2 convs put the 6x6 map's cells 8 px (1 m) apart,
    centred 1 px before the frame's middle."""
    vae = ConvVAE(z_size=288, spatial=8, enc_channels=list(SPATIAL_ENC_CHANNELS))
    np.testing.assert_allclose(vae.map_offsets(8.0), [2.625, 1.625, 0.625, -0.375, -1.375, -2.375])
    assert ConvVAE(z_size=32).map_offsets(8.0) is None


def tiny(seed=0, **kw):
    np.random.seed(seed)
    args = {"z_size": 18, "side": 3, "offsets": [1.0, 0.0, -1.0], "channels": 3}
    return MapRNN(**(args | {"n_mixtures": 2} | kw))


def batch(b=2, t=5, z_size=18, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(b, t, z_size)).astype(np.float32)
    a = rng.uniform(-1, 1, (b, t, 2)).astype(np.float32)
    return z, a, rng.normal(size=(b, t, z_size)).astype(np.float32)


@pytest.mark.parametrize("transport", [False, True])
def test_shapes_and_the_config_round_trip(transport):
    m = tiny(outcome_head=True, head_kernel=3, transport=transport, velocity=transport)
    assert m.config()["transport"] is transport and m.config()["outcome_hidden"] == 0
    assert m.config()["velocity"] is transport
    assert m.mdn.b.shape == (3 * 2 * 2 + 9 * transport,)
    assert m.hidden_size == 27 and m.can_dream and m.arch == "map"
    z, a, _ = batch()
    out = m(z, a)
    assert out.h.shape == (2, 5, 27) and out.mixture.shape == (2, 5, 3 * 2 * 18)
    assert out.reward.shape == out.done_logit.shape == (2, 5)
    assert out.outcome_logit.shape == (2, 5, 4)
    step = m.step(z[:, 0], a[:, 0])
    assert step.h.shape == (2, 27) and step.mixture.mu.shape == (2, 18, 2)
    assert step.outcome.shape == (2, 4)
    again = build_rnn(json.loads(json.dumps(m.config())))
    assert isinstance(again, MapRNN) and again.config() == m.config()
    for (_, p), (_, q) in zip(sorted(m.namedparams()), sorted(again.namedparams())):
        q.array[...] = p.array
    np.testing.assert_array_equal(again.step(z[:, 0], a[:, 0]).h, step.h)
    assert isinstance(build_rnn({"z_size": 4, "hidden_size": 3}), MDNRNN)
    with pytest.raises(ValueError, match="architecture"):
        build_rnn({"arch": "transformer"})


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"z_size": 20}, "map of latents"),
        ({"kernel": 2}, "odd"),
        ({"offsets": [1.0, 0.0]}, "offsets"),
        ({"channels": 0}, "channels"),
        ({"outcome_weights": [1, 1]}, "outcome_weights"),
        ({"head_kernel": 2}, "head_kernel"),
        ({"outcome_hidden": 3}, "needs outcome_head"),
        ({"outcome_hidden": -1, "outcome_head": True}, "outcome_hidden"),
        ({"outcome_hidden": 2.5, "outcome_head": True}, "outcome_hidden"),
    ],
)
def test_bad_configs_are_refused(kw, needle):
    with pytest.raises(ValueError, match=needle):
        tiny(**kw)


KERNELS_AND_TRANSPORT = [(1, False), (3, False), (1, True), (3, True)]
# (head_kernel, transport, outcome_hidden): the variants the graph and stepping must share
VARIANTS = [(k, t, 0) for k, t in KERNELS_AND_TRANSPORT] + [(3, False, 4)]


def velocity_m(transport=False, gain=(0.7, -0.4), **kw):
    """A tiny M with the constant-velocity prior, its gain away from the untrained 0."""
    m = tiny(outcome_head=True, head_kernel=3, transport=transport, velocity=True, **kw)
    m.velocity_gain.array[...] = gain
    return rough_head(m) if transport else m


def rough_head(m, seed=5):
    """Gives the mixture head random weights of unit scale, so that a transport's
    weights are far from the untrained identity."""
    rng = np.random.default_rng(seed)
    m.mdn.W.array[...] = rng.normal(size=m.mdn.W.shape).astype(np.float32)
    m.mdn.b.array[...] = rng.normal(size=m.mdn.b.shape).astype(np.float32)
    return m


@pytest.mark.parametrize("head_kernel, transport, outcome_hidden, velocity",
                         [(*v, False) for v in VARIANTS] + [(3, False, 0, True), (3, True, 0, True)])  # fmt: skip
def test_stepping_repeats_the_training_graph(head_kernel, transport, outcome_hidden, velocity):
    """`step`, one agent step at a time, gives the states, mixtures and heads of the
    whole-sequence `forward` (the mixture head per cell, or over 3 x 3 cells; with
    and without the transport; the outcome linear or convolutional; with the
    constant-velocity prior, whose state crosses from one chunk into the next)."""
    m = tiny(outcome_head=True, head_kernel=head_kernel, transport=transport,
             outcome_hidden=outcome_hidden, velocity=velocity)  # fmt: skip
    if transport:
        rough_head(m)
    if velocity:
        m.velocity_gain.array[...] = (0.7, -0.4)
    z, a, _ = batch(t=6)
    with chainer.no_backprop_mode():
        first = m(z[:, :2], a[:, :2])  # two chunks: the second starts from the first's state
        second = m(z[:, 2:], a[:, 2:], tuple(getattr(v, "array", v) for v in first.state))
        out = SimpleNamespace(**{k: chainer.Variable(np.concatenate(
            [getattr(first, k).array, getattr(second, k).array], axis=1)) for k in
            ("h", "mixture", "reward", "done_logit", "outcome_logit", "shaping")})  # fmt: skip
    state = None
    for t in range(6):
        s = m.step(z[:, t], a[:, t], state)
        state = s.state
        np.testing.assert_allclose(s.h, out.h.array[:, t], atol=1e-6)
        raw = m.split(out.mixture.array[:, t])
        for got, want in zip(s.mixture, raw):
            np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(s.reward, out.reward.array[:, t], atol=1e-6)
        np.testing.assert_allclose(s.done_logit, out.done_logit.array[:, t], atol=1e-5)
        want = m.outcome_values(out.outcome_logit.array[:, t], out.shaping.array[:, t])[2]
        np.testing.assert_allclose(s.outcome, want, atol=1e-5)


def test_with_no_offsets_learnt_the_mean_is_the_warped_z():
    m = tiny()
    m.mdn.W.array[...] = 0
    m.mdn.b.array[...] = 0
    z, a, _ = batch(t=1)
    step = m.step(z[:, 0], a[:, 0])
    taps = ego_warp.warp_taps(a[:, 0], m.offsets)
    want = ego_warp.warp_maps(z[:, 0].reshape(2, 9, 2), taps).reshape(2, 18)
    np.testing.assert_allclose(step.mixture.mu[:, :, 0], want, atol=1e-6)
    np.testing.assert_allclose(step.mixture.mu[:, :, 1], want, atol=1e-6)


def test_the_velocity_prior_moves_each_latent_on_by_its_last_change():
    """With no offsets learnt and gain g, the mean is warp(z_t) + g warp(z_t - warp(
    z_{t-1})); at the first step (and after a reset state) no change is known; the
    untrained gain (0) and the velocity off give today's M."""
    m = tiny(velocity=True)
    assert m.state_size == m.hidden_size + 18 + 1 and m.velocity_gain.array.tolist() == [0, 0]
    assert m.initial_state(2)[1].shape == (2, m.state_size)
    m.mdn.W.array[...] = 0
    m.mdn.b.array[...] = 0
    m.velocity_gain.array[...] = (1.0, 0.5)
    z, a, _ = batch(t=2)

    def warp(x, t):
        taps = ego_warp.warp_taps(a[:, t], m.offsets)
        return ego_warp.warp_maps(x.reshape(2, 9, 2), taps).reshape(2, 18)

    s0 = m.step(z[:, 0], a[:, 0])
    np.testing.assert_allclose(s0.mixture.mu[:, :, 0], warp(z[:, 0], 0), atol=1e-6)
    np.testing.assert_allclose(s0.state[1][:, -19:-1], warp(z[:, 0], 0), atol=1e-6)
    s1 = m.step(z[:, 1], a[:, 1], s0.state)
    v = z[:, 1] - warp(z[:, 0], 0)
    want = warp(z[:, 1], 1) + np.tile([1.0, 0.5], 9) * warp(v, 1)
    np.testing.assert_allclose(s1.mixture.mu[:, :, 1], want, atol=1e-5)
    m.velocity_gain.array[...] = 0
    plain = tiny(velocity=False)
    plain.mdn.W.array[...] = 0
    plain.mdn.b.array[...] = 0
    np.testing.assert_allclose(m.step(z[:, 1], a[:, 1], s0.state).mixture.mu,
                               plain.step(z[:, 1], a[:, 1]).mixture.mu, atol=1e-6)  # fmt: skip


def test_a_velocity_m_dreams_agents_in_lockstep_as_alone():
    """The dream (07 --dream's `dream_rollouts`, tau 0) of a velocity M, whose c is wider
    than h: four agents in lockstep end as each does alone."""
    from lib.control.agent import dream_rollouts
    from lib.models.controller import n_params

    m = velocity_m()
    rng = np.random.default_rng(2)
    params = rng.normal(0, 0.3, (2, n_params(m.z_size, m.hidden_size))).astype(np.float32)
    z0 = rng.normal(size=(4, m.z_size)).astype(np.float32)
    which = np.array([0, 1, 1, 0])
    together = dream_rollouts(m, params, which, z0, 0.0, np.random.default_rng(0), max_steps=6)
    for i in range(4):
        alone = dream_rollouts(m, params, which[i : i + 1], z0[i : i + 1], 0.0,
                               np.random.default_rng(0), max_steps=6)  # fmt: skip
        # float32 sums of another batch size differ in the last bits, which this random,
        # unstable M amplifies to about 1e-4 by step 6; a row mixed up differs by 0.1
        np.testing.assert_allclose(together[0][i], alone[0][0], atol=1e-3)
    assert len(set(np.round(together[0], 6))) > 1  # the agents' dreams differ


def test_the_transport_moves_each_cell_from_the_neighbour_it_picks():
    """A transport that puts all its weight on one tap moves the whole warped map by one
    cell (the edge repeated); the untrained one keeps about 95 % in place."""
    m = tiny(transport=True)
    z, a, _ = batch(t=1)
    taps = ego_warp.warp_taps(a[:, 0], m.offsets)
    warped = ego_warp.warp_maps(z[:, 0].reshape(2, 9, 2), taps).reshape(2, 3, 3, 2)
    m.mdn.W.array[...] = 0
    untrained = m.step(z[:, 0], a[:, 0]).mixture.mu[:, :, 0].reshape(2, 3, 3, 2)
    centre_share = np.exp(5.0) / (np.exp(5.0) + 8)
    assert centre_share == pytest.approx(0.95, abs=0.005)
    np.testing.assert_allclose(untrained[:, 1, 1], warped[:, 1, 1] * centre_share
        + (warped.sum(axis=(1, 2)) - warped[:, 1, 1]) * (1 - centre_share) / 8, atol=1e-5)  # fmt: skip
    m.mdn.b.array[...] = 0
    m.mdn.b.array[-9 + 1] = 50.0  # tap 1: the row above (di = 0), same column (dj = 1)
    mu = m.step(z[:, 0], a[:, 0]).mixture.mu[:, :, 0].reshape(2, 3, 3, 2)
    rows_above = np.concatenate([warped[:, :1], warped[:, :2]], axis=1)
    np.testing.assert_allclose(mu, rows_above, atol=1e-6)
    m.mdn.b.array[-9 + 1], m.mdn.b.array[-9 + 5] = 0.0, 50.0  # tap 5: the column right
    mu = m.step(z[:, 0], a[:, 0]).mixture.mu[:, :, 1].reshape(2, 3, 3, 2)
    np.testing.assert_allclose(mu, np.concatenate([warped[:, :, 1:], warped[:, :, 2:]], 2),
                               atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("head_kernel, transport", KERNELS_AND_TRANSPORT)
def test_the_step_head_on_arrays_is_the_graph_head_bit_for_bit(head_kernel, transport):
    m = tiny(head_kernel=head_kernel, transport=transport)
    if transport:
        rough_head(m)
    rng = np.random.default_rng(3)
    h = rng.standard_normal((4, m.hidden_size)).astype(np.float32)
    z_warped = rng.standard_normal((4, m.z_size)).astype(np.float32)
    with chainer.no_backprop_mode():
        want = m._head(h, z_warped).array
    np.testing.assert_array_equal(m._head_array(h, z_warped), want)


def directional_derivatives(model, value, eps=1e-3):
    """(analytic, numeric): the gradient already in `model`'s parameters (those that have
    one) along a random direction, and central differences of `value()` along it."""
    rng = np.random.default_rng(1)
    params = [p for _, p in sorted(model.namedparams()) if p.grad is not None]
    direction = [rng.normal(size=p.shape).astype(np.float32) for p in params]
    analytic = sum(float((p.grad * d).sum()) for p, d in zip(params, direction))
    saved = [p.array.copy() for p in params]
    values = []
    for sign in (1, -1):
        for p, s, d in zip(params, saved, direction):
            p.array[...] = s + sign * eps * d
        values.append(value())
    for p, s in zip(params, saved):
        p.array[...] = s
    return analytic, (values[0] - values[1]) / (2 * eps)


@pytest.mark.parametrize(
    "head_kernel, transport, outcome_hidden, velocity",
    [(1, False, 0, False), (3, False, 0, False), (3, True, 0, False), (1, False, 4, False),
     (3, False, 0, True)],
)  # fmt: skip
def test_gradients_match_finite_differences(head_kernel, transport, outcome_hidden, velocity):
    """The loss's gradient along a random direction of all parameters (and of the
    inputs) matches central differences, the transport's, the convolutional outcome
    head's and the velocity gain's weights included."""
    m = tiny(outcome_head=True, head_kernel=head_kernel, transport=transport,
             outcome_hidden=outcome_hidden, velocity=velocity)  # fmt: skip
    if transport:
        rough_head(m)
        m.mdn.W.array *= 0.3
    if velocity:
        m.velocity_gain.array[...] = (0.7, -0.4)
    loss_fn = MDNRNNLoss(m)
    z, a, z_next = batch(t=4)
    reward = np.full((2, 4), -0.01, np.float32)
    outcome = np.array([[0, 0, 0, 2], [0, 0, 1, 0]], np.int8)

    def loss():
        return loss_fn(z, a, z_next, None, reward, None, None, outcome)[0]

    m.cleargrads()
    loss().backward()
    analytic, numeric = directional_derivatives(m, lambda: float(loss().array))
    assert analytic == pytest.approx(numeric, rel=2e-2, abs=1e-3)
    assert abs(analytic) > 1e-2  # the check is not vacuous


@pytest.mark.parametrize("transport, velocity", [(False, False), (True, False), (False, True)])
def test_the_rollout_is_the_dream_at_tau_0_and_cells_are_the_states(transport, velocity):
    """`MapRNN.rollout` (the rollout loss's graph) dreams what `step` and `sample` at
    tau 0 dream; `forward`'s cells are the c that stepping carries (here with the 3 x 3
    mixture head, with and without the transport, with the constant-velocity prior)."""
    m = velocity_m(transport) if velocity else tiny(outcome_head=True, head_kernel=3,
                                                    transport=transport)  # fmt: skip
    if transport:
        rough_head(m)
    z, a, _ = batch(t=6)
    with chainer.no_backprop_mode():
        out = m(z, a)
    state = None
    for t in range(3):
        state = m.step(z[:, t], a[:, t], state).state
        np.testing.assert_allclose(state[1], out.cells[:, t], atol=1e-6)
    zs, hs = m.rollout(z[:, 3], a[:, 3:], state)
    dream = z[:, 3]
    for k in range(3):
        s = m.step(dream, a[:, 3 + k], state)
        state, dream = s.state, sample(s.mixture, 0.0, None)
        np.testing.assert_allclose(hs.array[:, k], s.h, atol=1e-5)
        np.testing.assert_allclose(zs.array[:, k], dream, atol=1e-5)


def test_rollout_starts_inside_the_episode_and_near_its_ending():
    rng = np.random.default_rng(0)
    valid = np.array([100, 30, 30, 5, 1])
    ends = np.array([False, True, False, True, True])
    # endings 0: the old draw, uniform over the chunk whatever the episode
    assert np.array_equal(
        rollout_starts(5, 100, 40, 200, np.random.default_rng(1)),
        np.random.default_rng(1).integers(0, 61, size=(5, 200)).reshape(-1),
    )
    for endings in (0.5, 1.0):
        t0 = rollout_starts(5, 100, 40, 2000, rng, valid, ends, endings).reshape(5, -1)
        assert t0.dtype == np.int64
        assert t0[0].min() == 0 and t0[0].max() == 60  # a full chunk: the old range
        assert t0[2].min() == 0 and t0[2].max() == 29  # inside its 30 steps, no ending
        assert t0[3].min() == 0 and t0[3].max() == 4 and (t0[4] == 0).all()
        near = t0[1] >= 0  # an ending at step 29: dreams of 40 steps from anywhere meet it
        assert near.all() and t0[1].max() == 29
    # A long episode's chunk that ends it: the fraction `endings` starts in its last K steps.
    valid, ends = np.array([100]), np.array([True])
    # (The last K steps of a 100-step chunk leave one start, 60; the others draw 0..60.)
    for endings, at_60 in ((1.0, 1.0), (0.3, 0.3 + 0.7 / 61)):
        t0 = rollout_starts(1, 100, 40, 20000, rng, valid, ends, endings)
        assert t0.max() == 60 and t0.min() == (60 if endings == 1 else 0)
        assert np.mean(t0 == 60) == pytest.approx(at_60, abs=0.02)
    # K = 10 in a 30-step episode that ends: with endings 1, starts in [20, 29]
    t0 = rollout_starts(1, 100, 10, 5000, rng, np.array([30]), np.array([True]), 1.0)
    assert t0.min() == 20 and t0.max() == 29


def rollout_loss_by_hand(m, losses, z, a, z_next, mask, outcome, t0):
    """Asserts the rollout loss (z, endings) of 3-step dreams from the starts `t0` (two
    per sequence), worked out by stepping M: the dreamt z's squared error and the
    weighted cross-entropy of the dreamt endings, over the masked steps."""
    z_loss, end_loss = losses
    want_z = want_end = count = 0.0
    for row, start in zip(np.repeat([0, 1], 2), t0):
        state = None
        for t in range(start):
            state = m.step(z[row : row + 1, t], a[row : row + 1, t], state).state
        dream = z[row : row + 1, start]
        for t in range(start, start + 3):
            s = m.step(dream, a[row : row + 1, t], state)
            state, dream = s.state, sample(s.mixture, 0.0, None)
            if mask[row, t]:
                count += 1
                want_z += float(((dream - z_next[row, t]) ** 2).mean())
                logit = s.h @ m.outcome.W.array.T + m.outcome.b.array
                p = np.exp(logit - logit.max())
                p /= p.sum()
                want_end -= [1.0, 2.0, 3.0, 4.0][outcome[row, t]] * np.log(p[0, outcome[row, t]])
    assert float(z_loss.array) == pytest.approx(want_z / count, rel=1e-4)
    assert float(end_loss.array) == pytest.approx(want_end / count, rel=1e-4)


def test_the_rollout_loss_by_hand_and_its_gradient():
    """rollout_loss: from the training pass's state before t0, the dreamt z's squared
    error and the dreamt endings' weighted cross-entropy, masked; its gradient along a
    random direction of the parameters matches central differences."""
    m = tiny(outcome_head=True, outcome_weights=[1.0, 2.0, 3.0, 4.0])
    loss_fn = MDNRNNLoss(m)
    z, a, z_next = batch(t=6)
    reward = np.full((2, 6), -0.01, np.float32)
    outcome = np.array([[0, 0, 0, 2, 0, 0], [0, 0, 1, 0, 0, 0]], np.int8)
    mask = np.ones((2, 6), np.float32)
    mask[1, 3:] = 0  # sequence 1 ended at step 2

    def total(steps=3, endings=0.0):
        loss_fn(z, a, z_next, mask, reward, None, None, outcome)
        return rollout_loss(m, loss_fn.last_output, z, a, z_next, mask, outcome, None, steps, 2,
                            np.random.default_rng(4), endings)  # fmt: skip

    # endings 1: the starts come from the mask (6 and 3 steps counted) and the outcomes
    # (only sequence 1's chunk holds its ending, at step 2)
    for endings in (0.0, 1.0):
        t0 = rollout_starts(2, 6, 3, 2, np.random.default_rng(4), [6, 3], [False, True], endings)
        rollout_loss_by_hand(m, total(endings=endings), z, a, z_next, mask, outcome, t0)

    # The gradient, with one component a latent (the likeliest-component pick is a
    # step function that central differences would straddle), and dreams of the whole
    # chunk (t0 = 0: a later start state comes from the training pass, which the
    # rollout loss does not backpropagate into, but central differences would move).
    m = tiny(seed=2, outcome_head=True, n_mixtures=1, outcome_weights=[1.0, 2.0, 3.0, 4.0])
    loss_fn = MDNRNNLoss(m)
    z_loss, end_loss = total(6)
    m.cleargrads()
    (z_loss + end_loss).backward()
    assert sum(p.grad is not None for _, p in m.namedparams()) == 6  # all but the shaping head
    analytic, numeric = directional_derivatives(m, lambda: sum(float(v.array) for v in total(6)))
    assert analytic == pytest.approx(numeric, rel=2e-2, abs=1e-3)
    assert abs(analytic) > 1e-2


# -- 04 --arch map end to end --------------------------------------------------------


@pytest.fixture(scope="module")
def spatial_v(tmp_path_factory):
    """Tiny data (40-step episodes) and a spatial V (2 latents a cell: z 72)."""
    root = tmp_path_factory.mktemp("map")
    common = ["--max-steps", 40, "--workers", 1, "--data-dir", root]
    run("01_generate_vae_data.py", "--rollouts", 3, "--testrollouts", 1, *common)
    run("02_generate_rnn_data.py", "--episodes", 6, "--testepisodes", 2, *common)
    run("03_train_vae.py", "--epochs", 1, "--batch-size", 64, "--spatial", 2, "--z-size", 72,
        "--data-dir", root)  # fmt: skip
    return root


def train(d, *extra, check=True):
    """04 --arch map at tiny sizes; with check=False (a refusal expected) in this process."""
    args = ("--arch", "map", "--map-channels", 3, "--mode", "dream", "--outcome-head",
            "--z-source", "mean", "--epochs", 2, "--batch-size", 4, "--seq-len", 16,
            "--open-loop", 3, "--rollout-steps", 4, "--rollout-starts", 2, "--data-dir", d,
            *extra)  # fmt: skip
    return run("04_train_rnn.py", *args) if check else run_here("04_train_rnn.py", *args)


def copy_data(src, dst):
    shutil.copytree(src, dst)
    return dst


def _v(d):
    vae, _ = saved_models.load_vae(str(d))
    return vae, str(d / "models" / "vae.npz")


def weights(d):
    with np.load(d / "models" / "rnn_dream.npz") as z:
        return {k: z[k] for k in z.files}


def test_the_rollout_end_weight_weighs_the_endings_part(spatial_v, tmp_path):
    """04 --rollout-end-weight W: the logged rollout loss is z + W x endings, epoch by
    epoch, and the M learns something else than with the default weight."""
    d = copy_data(spatial_v, tmp_path / "d")
    train(d, "--epochs", 1, "--rollout-end-weight", 5)
    with open(d / "models" / "rnn_dream_log.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        z, end = float(row["train_rollout_z_loss"]), float(row["train_rollout_end_loss"])
        assert float(row["train_rollout_loss"]) == pytest.approx(z + 5 * end, rel=1e-4)
    heavy = weights(d)
    train(d, "--epochs", 1, "--overwrite")
    plain = weights(d)
    assert any(not np.array_equal(heavy[k], plain[k]) for k in plain)


def test_04_trains_the_map_m_and_resumes_exactly(spatial_v, tmp_path):
    """Here with the transport and the velocity prior (--map-transport --map-velocity);
    the 14 x 14 test below trains without."""
    a = copy_data(spatial_v, tmp_path / "a")
    train(a, "--map-transport", "--map-velocity")
    sidecar = json.loads((a / "models" / "rnn_dream.json").read_text())
    config = sidecar["config"]
    assert config["arch"] == "map" and config["side"] == 6 and config["channels"] == 3
    assert config["transport"] is True and config["velocity"] is True
    assert sidecar["z_source"] == "mean"
    # trained on V's means, its held-out copy baseline is the means' (no posterior noise)
    log = (a / "models" / "rnn_dream_log.csv").read_text().splitlines()
    copy_nll = float(dict(zip(log[0].split(","), log[-1].split(",")))["copy_z_nll"])
    test = latents.encode_split(str(a / "rnn_data" / "test"), *_v(a))[0]
    train_split = latents.encode_split(str(a / "rnn_data" / "train"), *_v(a))[0]
    want = rnn_data.baseline_nll(train_split, train_split.mu, test, test.mu)["copy_z"]
    assert copy_nll == pytest.approx(want, rel=1e-4)
    np.testing.assert_allclose(config["offsets"], [2.625, 1.625, 0.625, -0.375, -1.375, -2.375])
    rnn, _ = saved_models.load_rnn(str(a), "dream", 72)
    assert isinstance(rnn, MapRNN) and rnn.hidden_size == 3 * 36 and rnn.can_dream
    # Interrupted after one batch, then resumed: the same weights, bit for bit.
    b = copy_data(spatial_v, tmp_path / "b")
    stopped = train(b, "--max-iterations", 1, "--map-transport", "--map-velocity")
    assert "continue with --resume" in stopped.stdout
    train(b, "--resume", "--map-transport", "--map-velocity")
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and len(wa) > 5
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    # 06 draws it like any M.
    run("06_draw_rnn_result.py", "--mode", "dream", "--data-dir", a)
    assert any(p.suffix == ".png" for p in (a / "results").iterdir())
    # the check scores a map M beside the ego-motion warp of the last real z too, and
    # beside the pixel mover's dream once 04b has trained one
    check = ("diagnostics/check_world_model.py", "--controllers", 0, "--samples", 1,
             "--probe-episodes", 20, "--bootstrap", 0, "--data-dir", a)  # fmt: skip
    run(*check)
    r = json.loads((a / "results" / "world_model_dream.json").read_text())["results"]
    assert "mover" not in r["collision_soon_auc"]
    run("04b_train_mover.py", "--epochs", 1, "--batches", 2, "--batch-size", 2, "--horizon", 2,
        "--channels", 2, "--data-dir", a)  # fmt: skip
    run(*check[:2], 3, *check[3:], "--episodes", 2)  # and 3 controllers in the pixel dream
    r = json.loads((a / "results" / "world_model_dream.json").read_text())["results"]
    for key in ("dream_vs_real", "pixel_dream_vs_real"):
        assert len(r[key]["dream"]) == 3 and r[key]["real"] == r["dream_vs_real"]["real"]
    assert r["pixel_dream_vs_real"]["dream"] != r["dream_vs_real"]["dream"]
    assert (a / "results" / "world_model_dream_pixel_dream.gif").stat().st_size > 0
    for row in r["open_loop"].values():
        assert {"warp", "mover", "z_mse"} <= set(row) and set(row["z_mse"]) == set(ol.SOURCES)
        assert row["z_mse"]["real"] == 0.0 and row["z_mse"]["warp"] < row["z_mse"]["copy"]
        assert np.isfinite(row["z_mse"]["mover"]) and row["z_mse"]["mover"] > 0
        assert row["z_mse"]["mover"] not in (row["z_mse"]["velocity"], row["z_mse"]["warp"])
    assert set(r["collision_soon_auc"]) == set(wm.FORECAST_SOURCES)
    table = (a / "results" / "world_model_dream.md").read_text()
    assert "ego-motion warp" in table and "pixel mover" in table and "pixel dream vs real" in table
    # and 06 draws the mover's open loop beside M's
    run("06_draw_rnn_result.py", "--mode", "dream", "--data-dir", a)
    assert (a / "results" / "mover_openloop.png").stat().st_size > 0
    summary = json.loads((a / "results" / "rnn_dream_summary.json").read_text())
    assert summary["mover_openloop_sq_error"] > 0


def test_a_snapshot_from_before_a_flag_existed_resumes(spatial_v, tmp_path):
    """A snapshot whose sidecar lacks a config key that a later 04 added (an M trained
    before --map-velocity existed) resumes when the flag is at its default, and is
    refused in one line when it is not (a real run failed so on 2026-12-07)."""
    d = copy_data(spatial_v, tmp_path / "d")
    stopped = train(d, "--max-iterations", 1)
    assert "continue with --resume" in stopped.stdout
    side = d / "models" / "rnn_dream_snapshot.json"
    sidecar = json.loads(side.read_text())
    assert sidecar["config"].pop("velocity") is False
    side.write_text(json.dumps(sidecar))
    refused = train(d, "--resume", "--map-velocity", check=False)
    assert "'velocity': False" in one_line_error(refused) and "--overwrite" in refused.stderr
    resumed = train(d, "--resume")
    assert "resumed from" in resumed.stdout
    assert json.loads((d / "models" / "rnn_dream.json").read_text())["config"]["velocity"] is False


def test_a_14x14_map_v_and_its_map_m(spatial_v, tmp_path):
    """03 --map-side 14: two convs, cells 4 px (0.5 m) apart; 04 builds the map M on
    that grid (its taps warp 196 cells) and 07 trains C in its dream on [z, h]."""
    d = copy_data(spatial_v, tmp_path / "fine")
    run("03_train_vae.py", "--epochs", 1, "--batch-size", 64, "--spatial", 1, "--map-side", 14,
        "--overwrite", "--data-dir", d)  # fmt: skip
    vae, _ = _v(d)
    assert vae.z_size == 196 and list(vae._config["enc_channels"]) == [32, 64]
    offsets = vae.map_offsets(8.0)
    np.testing.assert_allclose(offsets, 3.375 - 0.5 * np.arange(14))
    train(d, "--epochs", 1, "--overwrite")
    config = json.loads((d / "models" / "rnn_dream.json").read_text())["config"]
    assert config["side"] == 14 and config["transport"] is False
    np.testing.assert_allclose(config["offsets"], offsets)
    rnn, _ = saved_models.load_rnn(str(d), "dream", 196)
    assert rnn.hidden_size == 3 * 196
    run("07_train_controller.py", "--dream", "--epochs", 1, "--popsize", 4, "--trials", 1,
              "--eval-every", 1, "--eval-episodes", 1, "--max-steps", 40, "--data-dir", d)  # fmt: skip
    c = json.loads((d / "models" / "controller.json").read_text())
    assert c["dream"] and c["config"]["z_size"] == 196 and c["config"]["hidden_size"] == 3 * 196
    with np.load(d / "models" / "controller.npz") as w:
        assert w["W"].shape == (2, 196 + 3 * 196)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--arch", "map", "--mode", "dream"], "--outcome-head"),
        (["--arch", "map", "--mode", "window", "--task-weight", "1"], "--task-weight"),
        (["--arch", "cnn"], "--arch"),
        (["--map-channels", "0"], "--map-channels"),
        (["--z-source", "noise"], "--z-source"),
        (["--open-loop", "4", "--mode", "reward"], "--open-loop"),
        (["--open-loop", "-1", "--mode", "dream"], "--open-loop"),
        (["--rollout-steps", "5", "--mode", "window"], "--arch map"),
        (["--rollout-starts", "0"], "--rollout-starts"),
        (["--map-head-kernel", "2"], "--map-head-kernel"),
        (["--map-transport"], "--map-transport needs --arch map"),
        (["--map-velocity"], "--map-velocity needs --arch map"),
        (["--arch", "map", "--map-outcome-hidden", "4"], "add --arch map --outcome-head"),
        (["--map-outcome-hidden", "-1"], "--map-outcome-hidden"),
        (["--arch", "map", "--rollout-steps", "5", "--rollout-endings", "1.5"], "[0, 1]"),
        (["--arch", "map", "--rollout-endings", "0.5"], "add --rollout-steps"),
        (["--arch", "map", "--rollout-end-weight", "2"], "add --rollout-steps"),
        (["--rollout-end-weight", "-1"], "--rollout-end-weight"),
    ],
)
def test_bad_flags_are_refused(extra, needle):
    line = one_line_error(run_here("04_train_rnn.py", "--epochs", 1, *extra))
    assert needle in line


def test_a_flat_v_is_refused(tiny_models, tmp_path):
    d = copy_data(tiny_models, tmp_path / "d")
    before = sorted(p.name for p in (d / "models").iterdir())
    line = one_line_error(
        run_here(
            "04_train_rnn.py",
            "--arch",
            "map",
            "--mode",
            "window",
            "--epochs",
            1,
            "--data-dir",
            d,
            "--overwrite",
        )
    )
    assert "spatial V" in line
    assert sorted(p.name for p in (d / "models").iterdir()) == before  # nothing written


@pytest.mark.parametrize("arch", ["lstm", "map"])
def test_open_loop_inputs_chain_m_own_predictions(arch):
    """04 --open-loop: inside a dreamt run every input is M's prediction from the input
    before it (an open-loop rollout by hand), each period starts real, and prob 0 or
    no dreamt period leaves the data as it is."""
    model = tiny(seed=1) if arch == "map" else MDNRNN(z_size=18, hidden_size=8, n_mixtures=2)
    z, a, _ = batch(b=3, t=9, seed=4)
    np.testing.assert_array_equal(model.open_loop_inputs(z, a, 0.0, 3, 0.0, None), z)
    with pytest.raises(ValueError, match="block"):
        model.open_loop_inputs(z, a, 1.0, 0, 0.0, np.random.default_rng(0))
    for block in (2, 20):
        got = model.open_loop_inputs(z, a, 1.0, block, 0.0, np.random.default_rng(5))
        phase = np.random.default_rng(5).integers(0, block + 1, size=3)
        for i in range(3):
            want, state = z[i : i + 1, 0], None
            for t in range(9):
                if t == 0 or (t + phase[i]) % (block + 1) == 0:
                    want = z[i : i + 1, t]  # a period starts from the real frame
                np.testing.assert_allclose(got[i, t], want[0], atol=1e-5, err_msg=f"{i} {t}")
                out = model.step(want, a[i : i + 1, t], state)
                state = out.state
                want = sample(out.mixture, 0.0, None)
        real = [(t + p) % (block + 1) == 0 or t == 0 for p in phase for t in range(9)]
        dreamt = np.any(got != z, axis=2).ravel()
        assert not (dreamt & np.array(real)).any() and dreamt[~np.array(real)].all()


def test_the_fused_sequence_node_equals_the_chainer_graph():
    """lib.kernels.map_lstm's one-node sequence gives the outputs and weight gradients
    of the same network built from Chainer functions, step by step."""
    m = tiny(outcome_head=True)
    loss_fn = MDNRNNLoss(m)
    z, a, z_next = batch(b=3, t=7)
    reward = np.full((3, 7), -0.01, np.float32)
    outcome = np.zeros((3, 7), np.int8)
    h0 = np.random.default_rng(2).normal(size=(3, m.hidden_size)).astype(np.float32) * 0.3
    state = (h0, h0 * 0.5)
    got = {}
    for fast in (True, False):
        with chainer.using_config("fast_lstm", fast):
            loss, (h, c) = loss_fn(z, a, z_next, None, reward, None, state, outcome)
            m.cleargrads()
            loss.backward()
        got[fast] = (
            float(loss.array),
            h.array,
            c.array,
            {k: p.grad.copy() for k, p in m.namedparams()},
        )
    assert got[True][0] == pytest.approx(got[False][0], rel=1e-6)
    np.testing.assert_allclose(got[True][1], got[False][1], atol=1e-6)
    np.testing.assert_allclose(got[True][2], got[False][2], atol=1e-6)
    for k, g in got[False][3].items():
        np.testing.assert_allclose(got[True][3][k], g, rtol=1e-4, atol=1e-6, err_msg=k)


def test_z_sources_and_dream_starts():
    """M reads V's posterior draws (the paper) or its means; a dream of a means-trained M
    starts from a first frame's mean."""
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(5, 3)).astype(np.float32)
    data = latents.LatentEpisodes({
        "mu": mu, "logvar": np.full((5, 3), -1.0, np.float32),
        "action": np.zeros((4, 2), np.float32), "reward": np.zeros(4, np.float32),
        "done": np.array([0, 0, 0, 1], bool), "frame_offsets": np.array([0, 5]),
        "step_offsets": np.array([0, 4]), "files": np.array(["a.npz"]),
    })  # fmt: skip
    assert rnn_data.latents_for(data, "mean", rng) is data.mu
    drawn = rnn_data.latents_for(data, "sample", np.random.default_rng(1))
    np.testing.assert_array_equal(drawn, rnn_data.sample_z(data, np.random.default_rng(1)))
    assert np.abs(drawn - mu).max() > 0.05
    with pytest.raises(ValueError, match="z source"):
        rnn_data.latents_for(data, "noise", rng)
    means = dream_starts(3, 0, 6, mu, data.logvar, "mean")
    assert all(any((row == m).all() for m in mu) for row in means)
    noisy = dream_starts(3, 0, 6, mu, data.logvar)
    assert not any(any((row == m).all() for m in mu) for row in noisy)
