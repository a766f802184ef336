"""M's look-ahead head (lib/models/lookahead_heads.py), the planner that reads it
(lib/control/lookahead_planner.py), 07b_train_lookahead.py and 08 --planner --plan-with lookahead."""

import json
import os
import signal
import subprocess
import sys
import time

import chainer
import chainer.functions as F
import numpy as np
import pytest
from chainer import serializers
from cli_helpers import (
    assert_events_match_log,
    assert_refused,
    bad_flags,
    one_line_error,
    run,
    run_here,
)

from lib import manifest, training
from lib.control import lookahead_planner as la
from lib.control.agent import WorldModelsAgent
from lib.control.dream_planner import PlannerAgent
from lib.env import socnavenv as sn
from lib.env.evaluation import evaluate, evaluation_seeds
from lib.models import lookahead_heads as head_lib
from lib.models import saved_models
from lib.models.controller import Controller, n_params
from lib.models.mdn_rnn import MDNRNN
from lib.models.vae import ConvVAE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Z, HIDDEN = 8, 16


def random_agent(seed=0):
    np.random.seed(seed)  # Chainer's initializers: the same models whatever ran before
    rng = np.random.default_rng(seed)
    vae = ConvVAE(z_size=Z)
    rnn = MDNRNN(z_size=Z, hidden_size=HIDDEN, reward_head=True, done_head=True)
    params = rng.normal(0, 0.5, (1, n_params(Z, HIDDEN))).astype(np.float32)
    return vae, rnn, params


def head_fearing_advance(z_size=Z, hidden=HIDDEN):
    """A hand-made head: risk 1 whenever the action advances (a[0] > 0), else 0."""
    head = head_lib.LookaheadHead(z_size, hidden, width=4)
    for p in head.params():
        p.array[...] = 0.0
    head.action.W.array[0, 0] = 1.0  # unit 0 = relu(a[0])
    head.hidden.W.array[0, 0] = 1.0
    head.out.b.array[...] = -20.0
    head.out.W.array[:, 0] = 200.0  # logit -20 + 200 relu(a[0])
    return head


# ---------------------------------------------------------------------------
# The head
# ---------------------------------------------------------------------------
def test_risk_is_the_sigmoid_of_forward_and_normalises_inputs():
    rng = np.random.default_rng(0)
    head = head_lib.LookaheadHead(Z, HIDDEN, width=32)
    head.set_normalization(rng.normal(size=3 * Z + HIDDEN), rng.uniform(0.5, 2, 3 * Z + HIDDEN))
    x = rng.normal(size=(5, 3 * Z + HIDDEN)).astype(np.float32)
    a = rng.uniform(-1, 1, (5, 7, 2)).astype(np.float32)
    with chainer.no_backprop_mode():
        want = F.sigmoid(head(x, a)).array
    for j in range(3):
        np.testing.assert_allclose(head.risk(x, a, j), want[..., j], rtol=1e-5, atol=1e-6)
    # shifting inputs by the mean and scaling by the std is undone by the normalisation
    head2 = head_lib.LookaheadHead(Z, HIDDEN, width=32)
    head2.copyparams(head)
    head2.set_normalization(head.mean * 0, head.std * 0 + 1)
    np.testing.assert_allclose(
        head.risk(x * head.std + head.mean, a, 2), head2.risk(x, a, 2), rtol=1e-4, atol=1e-5
    )


def test_features_are_z_then_its_two_differences_then_h():
    z, z1, z2, h = (np.full((1, n), v, np.float32) for n, v in ((2, 5), (2, 3), (2, 2), (3, 9)))
    np.testing.assert_array_equal(head_lib.features(z, z1, z2, h), [[5, 5, 2, 2, 1, 1, 9, 9, 9]])


def test_labels_and_auc():
    assert head_lib.HORIZONS == (3, 5, 10)
    fail = np.array([[0, 1, 4, 10, 12]])
    np.testing.assert_array_equal(
        head_lib.labels(fail)[0], [[0, 0, 0], [1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]]
    )
    np.testing.assert_array_equal(head_lib.labels(fail, (3, 5))[0, 2], [0, 1])
    assert head_lib.auc([0.1, 0.2, 0.9, 0.8], [0, 0, 1, 1]) == 1.0
    assert head_lib.auc([0.9, 0.8, 0.1, 0.2], [0, 0, 1, 1]) == 0.0
    assert np.isnan(head_lib.auc([0.1, 0.2], [0, 0]))


def test_head_refuses_bad_horizons():
    with pytest.raises(ValueError, match="increasing"):
        head_lib.LookaheadHead(Z, HIDDEN, horizons=(5, 3))
    with pytest.raises(ValueError, match="not 7"):
        head_lib.LookaheadHead(Z, HIDDEN).horizon_index(7)


def test_the_loss_trains_a_head_to_fear_advancing():
    rng = np.random.default_rng(1)
    head = head_lib.LookaheadHead(Z, HIDDEN, width=16)
    opt = chainer.optimizers.Adam(1e-2)
    opt.setup(head)
    for _ in range(150):
        x = rng.normal(size=(32, 3 * Z + HIDDEN)).astype(np.float32)
        a = rng.uniform(-1, 1, (32, 6, 2)).astype(np.float32)
        fail = np.where(a[..., 0] > 0, 2, 0).astype(np.int8)  # advancing fails at step 2
        loss = head_lib.loss(head, x, a, fail)
        head.cleargrads()
        loss.backward()
        opt.update()
    a = np.array([[[0.8, 0.0], [-0.8, 0.0]]], np.float32)
    risk = head.risk(rng.normal(size=(1, 3 * Z + HIDDEN)).astype(np.float32), a, 0)
    assert risk[0, 0] > 0.9 and risk[0, 1] < 0.1


def test_moments_are_the_kept_rows_mean_and_std_whatever_the_chunk():
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (1001, 5)).astype(np.float16)
    keep = rng.random(1001) < 0.7
    want = x[keep].astype(np.float64)
    for chunk in (1, 64, 5000):
        mean, std = head_lib.moments(x, keep, chunk)
        np.testing.assert_allclose(mean, want.mean(0), rtol=1e-12)
        np.testing.assert_allclose(std, want.std(0), rtol=1e-9)


def test_an_ensemble_forecasts_its_members_mean_and_saves_as_one_head(tmp_path):
    np.random.seed(3)
    ens = head_lib.make_head(3, z_size=Z, hidden_size=HIDDEN, width=8)
    assert isinstance(ens, head_lib.LookaheadEnsemble) and len(ens) == 3
    assert isinstance(head_lib.make_head(1, z_size=Z, hidden_size=HIDDEN), head_lib.LookaheadHead)
    assert (ens.z_size, ens.hidden_size, ens.horizons) == (Z, HIDDEN, head_lib.HORIZONS)
    assert ens.config()["members"] == 3 and ens.horizon_index(10) == 2
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, ens.feature_size)).astype(np.float32)
    a = rng.uniform(-1, 1, (5, 7, 2)).astype(np.float32)
    parts = [m.risk(x, a, 2) for m in ens]
    assert not np.allclose(parts[0], parts[1])  # members start apart
    np.testing.assert_allclose(ens.risk(x, a, 2), np.mean(parts, 0), rtol=1e-6)
    np.testing.assert_allclose(
        head_lib.probabilities(ens, x, a)[..., 2], ens.risk(x, a, 2), atol=1e-6
    )
    ens.set_normalization(np.ones(ens.feature_size), np.full(ens.feature_size, 2.0))
    assert all((m.std == 2).all() for m in ens)
    # Saved and loaded as 07b_train_lookahead.py and 08 do: the same forecasts.
    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / "lookahead.npz"
    training.save_model(str(path), ens, {"config": ens.config()})
    rnn = MDNRNN(z_size=Z, hidden_size=HIDDEN, reward_head=True, done_head=True)
    again, _ = saved_models.load_lookahead(str(tmp_path), rnn)
    np.testing.assert_array_equal(again.risk(x, a, 2), ens.risk(x, a, 2))
    with pytest.raises(ValueError, match="2 or more"):
        head_lib.LookaheadEnsemble(1, z_size=Z, hidden_size=HIDDEN)


# ---------------------------------------------------------------------------
# Labels from the true simulator
# ---------------------------------------------------------------------------
def one_room(robot, humans=()):
    sim = sn.SocNavSim(1, sn.EnvConfig(n_humans=max(len(humans), 1)))
    sim.robot[0] = robot
    sim.goal[0] = (-3.5, -3.5)
    sim.humans[0] = humans if len(humans) else [(3.5, 3.5, 0.0, 0.0)]
    sim.active[0] = True
    return sim


def test_hold_failures_on_copies_of_the_true_state():
    # facing the wall 0.4 m away: driving on leaves the room, stopping does not
    sim = one_room((3.3, 0.0, 0.0))
    robot_before = sim.robot.copy()
    fail = la.hold_failures(sim, np.array([0]), np.array([[[1.0, 0.0], [-1.0, 0.0]]]), 10)
    assert 1 <= fail[0, 0] <= 10 and fail[0, 1] == 0
    np.testing.assert_array_equal(sim.robot, robot_before)  # the real state is untouched
    # a person walking at the robot from 1 m: even standing still collides
    sim = one_room((0.0, 0.0, 0.0), [(1.0, 0.0, np.pi, 1.0)])
    fail = la.hold_failures(sim, np.array([0]), np.array([[[-1.0, 0.0]]]), 10)
    assert 1 <= fail[0, 0] <= 10


# ---------------------------------------------------------------------------
# The planner
# ---------------------------------------------------------------------------
def test_choose_actions_keeps_c_unless_it_is_risky():
    cand = np.array([[[0.9, 0.0], [0.5, 0.0], [-1.0, 1.0]]] * 2, np.float32)
    risk = np.array([[0.9, 0.1, 0.0], [0.01, 0.0, 0.0]], np.float32)
    a, replaced = la.choose_actions(risk, cand, threshold=0.05, cost=0.05)
    # row 0: C is risky; [0.5, 0] costs 0.1 + 0.05 * 0.16, [-1, 1] 0 + 0.05 * 4.61
    np.testing.assert_array_equal(a, np.float32([[0.5, 0.0], [0.9, 0.0]]))
    np.testing.assert_array_equal(replaced, [True, False])
    a, replaced = la.choose_actions(risk, cand, threshold=1.0, cost=0.05)
    np.testing.assert_array_equal(a, cand[:, 0])
    assert not replaced.any()


def test_the_planner_avoids_the_action_the_head_fears():
    vae = ConvVAE(z_size=Z)
    rnn = MDNRNN(z_size=Z, hidden_size=HIDDEN)
    params = np.zeros((1, n_params(Z, HIDDEN)), np.float32)
    params[0, -2] = 2.0  # C: full speed ahead whatever it sees
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    # At the defaults (cost 0) the safest action: the first of the equally safe, a stop.
    agent = la.LookaheadPlanner(2, vae, rnn, params, head_fearing_advance())
    agent.reset(np.arange(2), [1, 2])
    np.testing.assert_array_equal(agent.act(None, frames), [[-1, -1], [-1, -1]])
    assert agent.replaced_fraction == 1.0
    # With a cost on the distance from C's action: the nearest action that does not advance.
    settings = la.LookaheadSettings(cost=0.05)
    agent = la.LookaheadPlanner(2, vae, rnn, params, head_fearing_advance(), settings)
    agent.reset(np.arange(2), [1, 2])
    a = agent.act(None, frames)
    np.testing.assert_allclose(a[:, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(a[:, 1], 0.0, atol=1e-6)  # C turns by tanh(0) = 0
    # a head that fears nothing leaves C's action alone
    calm = head_fearing_advance()
    calm.out.W.array[...] = 0.0
    agent = la.LookaheadPlanner(2, vae, rnn, params, calm)
    agent.reset(np.arange(2), [1, 2])
    np.testing.assert_allclose(agent.act(None, frames)[:, 0], np.tanh(2.0), rtol=1e-6)


def test_threshold_one_is_the_linear_agent():
    vae, rnn, params = random_agent(3)
    head = head_lib.LookaheadHead(Z, HIDDEN, width=8)
    seeds = evaluation_seeds(5, 6)
    config = sn.EnvConfig(max_steps=30)
    _s_lin, e_lin = evaluate(WorldModelsAgent(3, vae, rnn, params), seeds, config, 3)
    settings = la.LookaheadSettings(threshold=1.0)
    planner = la.LookaheadPlanner(3, vae, rnn, params, head, settings)
    _s_plan, e_plan = evaluate(planner, seeds, config, 3)
    for a, b in zip(e_lin, e_plan):
        np.testing.assert_array_equal(a.action, b.action)
    assert planner.replaced == 0 and planner.steps == sum(e.length for e in e_plan)


def test_planner_in_lockstep_equals_one_at_a_time():
    # Fixed frames (as the return planner's test): the comparison is of the planning.
    vae, rnn, params = random_agent(4)
    head = head_lib.LookaheadHead(Z, HIDDEN, width=8)
    head.out.b.array[...] = 0.0
    frames = np.random.default_rng(3).integers(0, 256, (4, 3, 64, 64, 3), dtype=np.uint8)
    settings = la.LookaheadSettings(threshold=0.3, grid=5)
    together = la.LookaheadPlanner(3, vae, rnn, params, head, settings)
    together.reset(np.arange(3), [11, 12, 13])
    batched = np.stack([together.act(None, f) for f in frames], axis=1)
    for i in range(3):
        alone = la.LookaheadPlanner(1, vae, rnn, params, head, settings)
        alone.reset(np.array([0]), [11 + i])
        actions = np.stack([alone.act(None, f[i : i + 1])[0] for f in frames])
        np.testing.assert_allclose(batched[i], actions, atol=1e-5)
    assert together.replaced > 0


def test_crops_pool_the_frames_centre():
    assert head_lib.crop_box(64) == (12, 52)  # 40 px: 5 m of the 8 m view
    assert head_lib.pixel_size(64) == 20 * 20 * 3
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    frames[0, 12:14, 12:14, 0] = [[10, 20], [30, 41]]  # the first pooled pixel: 25.25
    frames[0, 51, 51, 2] = 200  # the last pooled pixel's blue: 50
    frames[1, :12] = 255  # outside the centre: not read
    p = head_lib.crops(frames)
    assert p.shape == (2, 1200) and p.dtype == np.uint8
    np.testing.assert_array_equal(p[0, :3], [25, 0, 0])
    np.testing.assert_array_equal(p[0, -3:], [0, 0, 50])
    assert p[0].sum() == 75 and p[1].sum() == 0
    with pytest.raises(ValueError, match="too small"):
        head_lib.crop_box(2)


def test_pixel_features_are_the_crop_then_its_two_differences():
    p, p1, p2 = (np.array([[v, 0]], np.uint8) for v in (255, 51, 0))
    rows = np.stack([p, p1, p2], axis=1)  # (N, 3, P), as the recorder keeps them
    np.testing.assert_allclose(head_lib.pixel_features(rows), [[1, 0, 0.8, 0, 0.2, 0]])
    x = np.array([[7.0]], np.float16)
    np.testing.assert_allclose(head_lib.row_features(x, rows), [[7, 1, 0, 0.8, 0, 0.2, 0]])
    assert head_lib.row_features(x).dtype == np.float32


def test_a_head_with_pixels_sizes_its_input_and_floors_pixels_std():
    head = head_lib.make_head(z_size=Z, hidden_size=HIDDEN, width=4, pixels=5)
    assert head.feature_size == 3 * Z + HIDDEN + 15 == head.state.W.shape[1]
    again = head_lib.make_head(**head.config())
    assert again.pixels == 5 and again.feature_size == head.feature_size
    head.set_normalization(np.zeros(head.feature_size), np.zeros(head.feature_size))
    np.testing.assert_allclose(head.std[: 3 * Z + HIDDEN], 1e-3)
    np.testing.assert_allclose(head.std[3 * Z + HIDDEN :], head_lib.PIXEL_STD_FLOOR)
    ens = head_lib.make_head(2, z_size=Z, hidden_size=HIDDEN, width=4, pixels=5)
    assert ens.pixels == 5 and ens.config()["pixels"] == 5
    with pytest.raises(ValueError, match="pixels"):
        head_lib.LookaheadHead(Z, HIDDEN, pixels=-1)
    # A sidecar written before heads read pixels builds a head without them.
    old = {k: v for k, v in head.config().items() if k != "pixels"}
    assert head_lib.make_head(**old).pixels == 0


def test_a_conv_head_sizes_its_layers_and_scales_its_pixels():
    size = head_lib.pixel_size(64)
    assert head_lib.conv_sizes(size) == (20, 3)
    head = head_lib.make_head(z_size=Z, hidden_size=HIDDEN, width=4, pixels=size, trunk="conv")
    base = 3 * Z + HIDDEN
    assert head.base_size == base and head.state.W.shape[1] == base
    assert head.pixel.W.shape[1] == head_lib.CONV_LAYERS[-1][0] * 3 * 3
    again = head_lib.make_head(**head.config())
    assert again.trunk == "conv" and again.pixels == size
    ens = head_lib.make_head(2, **head.config())
    assert ens.trunk == "conv" and ens.config()["trunk"] == "conv"
    # [z, motion, h] standardised; the pixels as they are, their differences scaled.
    head.set_normalization(np.full(head.feature_size, 5.0), np.full(head.feature_size, 2.0))
    np.testing.assert_allclose(head.mean, [5.0] * base + [0.0] * 3 * size)
    np.testing.assert_allclose(
        head.std, [2.0] * base + [1.0] * size + [1 / head_lib.DIFF_SCALE] * 2 * size
    )
    # A sidecar written before heads had trunks builds a dense head.
    old = {k: v for k, v in head.config().items() if k != "trunk"}
    assert head_lib.make_head(**old).trunk == "dense"
    with pytest.raises(ValueError, match="needs pixels"):
        head_lib.LookaheadHead(Z, HIDDEN, trunk="conv")
    with pytest.raises(ValueError, match="trunk must be one of"):
        head_lib.LookaheadHead(Z, HIDDEN, pixels=size, trunk="lstm")
    with pytest.raises(ValueError, match="square crops"):
        head_lib.LookaheadHead(Z, HIDDEN, pixels=5, trunk="conv")
    with pytest.raises(ValueError, match="12 px or more"):
        head_lib.LookaheadHead(Z, HIDDEN, pixels=head_lib.pixel_size(32), trunk="conv")


def test_a_conv_heads_risk_is_the_sigmoid_of_forward_for_a_batch_or_one_row():
    rng = np.random.default_rng(0)
    np.random.seed(0)
    head = head_lib.LookaheadHead(Z, HIDDEN, width=16, pixels=head_lib.pixel_size(64), trunk="conv")
    d = head.feature_size
    head.set_normalization(rng.normal(size=d), rng.uniform(0.5, 2, d))
    x = rng.uniform(-1, 1, (5, d)).astype(np.float32)
    a = rng.uniform(-1, 1, (5, 7, 2)).astype(np.float32)
    with chainer.no_backprop_mode():
        want = F.sigmoid(head(x, a)).array
    for j in range(3):
        np.testing.assert_allclose(head.risk(x, a, j), want[..., j], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            head.risk(x[2:3], a[2:3], j), want[2:3, :, j], rtol=1e-5, atol=1e-6
        )
    # Chainer's own convolution (as on a GPU) gives the same forecast.
    with chainer.using_config("fastconv", False):
        np.testing.assert_allclose(head.risk(x, a, 2), want[..., 2], rtol=1e-4, atol=1e-5)


def test_the_loss_trains_a_conv_head_to_fear_a_person_wherever_they_stand():
    """Rows whose frame's centre holds a red 2 x 2 px patch (a person) at a random place
    fail when the action advances; the rest never fail. [z, motion, h] are noise."""
    rng = np.random.default_rng(2)
    np.random.seed(2)
    size = head_lib.pixel_size(64)
    head = head_lib.LookaheadHead(Z, HIDDEN, width=16, pixels=size, trunk="conv")
    head.set_normalization(np.zeros(head.feature_size), np.ones(head.feature_size))

    def batch(n):
        crops = np.zeros((n, 3, 20, 20, 3), np.uint8)
        person = rng.random(n) < 0.5
        for i in np.flatnonzero(person):
            r, c = rng.integers(0, 19, 2)
            crops[i, :, r : r + 2, c : c + 2, 0] = 255
        x = head_lib.row_features(rng.normal(size=(n, 3 * Z + HIDDEN)), crops.reshape(n, 3, -1))
        a = rng.uniform(-1, 1, (n, 4, 2)).astype(np.float32)
        fail = np.where(person[:, None] & (a[..., 0] > 0), 3, 0).astype(np.int8)
        return x, a, fail

    opt = chainer.optimizers.Adam(3e-3)
    opt.setup(head)
    for _ in range(150):
        loss = head_lib.loss(head, *batch(32))
        head.cleargrads()
        loss.backward()
        opt.update()
    x, a, fail = batch(200)
    metrics = head_lib.held_out_metrics(head, x, a, fail, grid_size=4)
    assert metrics["auc_3"] > 0.95


def head_fearing_advance_near_red(size):
    """A hand-made head reading pixels: risk 1 when the action advances (a[0] > 0.5)
    and the frame's centre holds a 4 x 4 px red patch (a person), else 0."""
    head = head_lib.LookaheadHead(Z, HIDDEN, width=4, pixels=size)
    for p in head.params():
        p.array[...] = 0.0
    start = 3 * Z + HIDDEN
    head.state.W.array[0, start : start + size : 3] = 0.25  # this frame's red, 4 pooled px: 1
    head.state.b.array[0] = -1.5
    head.action.W.array[0, 0] = 1.0  # unit 0 = relu(red + a[0] - 1.5)
    head.hidden.W.array[0, 0] = 1.0
    head.out.b.array[...] = -20.0
    head.out.W.array[:, 0] = 200.0
    return head


def test_the_planner_reads_the_frames_centre():
    vae = ConvVAE(z_size=Z)
    rnn = MDNRNN(z_size=Z, hidden_size=HIDDEN)
    params = np.zeros((1, n_params(Z, HIDDEN)), np.float32)
    params[0, -2] = 2.0  # C: full speed ahead whatever it sees
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    frames[1, 20:24, 20:24, 0] = 255  # a person in the centre
    frames[2, 0:4, 0:4, 0] = 255  # a person outside it
    head = head_fearing_advance_near_red(head_lib.pixel_size(64))
    agent = la.LookaheadPlanner(3, vae, rnn, params, head, la.LookaheadSettings(cost=0.05))
    assert agent.pixels
    agent.reset(np.arange(3), [1, 2, 3])
    a = agent.act(None, frames)
    np.testing.assert_allclose(a[[0, 2], 0], np.tanh(2.0), rtol=1e-6)  # C's, kept
    np.testing.assert_allclose(a[1], [0.5, 0.0], atol=1e-6)  # the nearest that is safe
    # The crops it keeps: this frame's and (at an episode's start) the same twice more.
    x_rows = agent.plan(*_state(agent), np.arange(3), slice(None))[2]
    np.testing.assert_array_equal(x_rows[:, 0], head_lib.crops(frames))
    # A head whose pixels do not fit V's frames is refused.
    with pytest.raises(ValueError, match="pixel values"):
        la.LookaheadPlanner(1, vae, rnn, params, head_fearing_advance_near_red(12))


def _state(agent):
    z = agent.encode(agent._images, np.arange(agent.n))
    return z, agent.h, agent.c


def test_motion_memory_repeats_the_first_frame():
    mem = la.MotionMemory(2, 1, chainer.backend.CpuDevice())
    mem.reset([0, 1])
    live = np.array([0, 1])
    z1, z2 = mem.step(np.array([[1.0], [10.0]], np.float32), live, live)
    np.testing.assert_array_equal(np.hstack([z1, z2]), [[1, 1], [10, 10]])
    z1, z2 = mem.step(np.array([[2.0], [20.0]], np.float32), live, live)
    np.testing.assert_array_equal(np.hstack([z1, z2]), [[1, 1], [10, 10]])
    mem.reset([1])
    z1, z2 = mem.step(np.array([[3.0], [5.0]], np.float32), live, live)
    np.testing.assert_array_equal(np.hstack([z1, z2]), [[2, 1], [5, 5]])


def test_settings_refuse_nonsense():
    for bad in ({"grid": 1}, {"threshold": 1.5}, {"threshold": -0.1}, {"cost": -1},
                {"horizon": 0}, {"grid": 2.5}):  # fmt: skip
        with pytest.raises(ValueError):
            la.LookaheadSettings(**bad)
    vae, rnn, params = random_agent()
    with pytest.raises(ValueError, match="reads z"):
        la.LookaheadPlanner(1, vae, rnn, params, head_lib.LookaheadHead(Z + 1, HIDDEN))
    with pytest.raises(ValueError, match="not 7"):
        la.LookaheadPlanner(
            1, vae, rnn, params, head_lib.LookaheadHead(Z, HIDDEN), la.LookaheadSettings(horizon=7)
        )
    # Both planners take one C (lib.control.agent.PlanningAgent checks it for them).
    two = np.concatenate([params, params])
    with pytest.raises(ValueError, match="one controller, got 2"):
        la.LookaheadPlanner(1, vae, rnn, two, head_lib.LookaheadHead(Z, HIDDEN))
    with pytest.raises(ValueError, match="one controller, got 2"):
        PlannerAgent(1, vae, rnn, two)


def test_recorder_labels_what_it_plays():
    vae, rnn, params = random_agent(5)
    config = sn.EnvConfig(max_steps=25)
    seeds = evaluation_seeds(9, 4)
    rec = la.Recorder(4, vae, rnn, params, None, None, 0.0, 1.0, 10, seed=0)
    _, episodes = evaluate(rec, seeds, config, 4)
    data = rec.data()
    n = sum(e.length for e in episodes)
    assert len(data["x"]) == n == rec.seen  # keep_safe 1: every row
    assert data["x"].shape[1] == 3 * Z + HIDDEN and data["x"].dtype == np.float16
    assert data["actions"].shape == (n, la.LABEL_GRID**2 + 1, 2)
    # explore 0 and no head: C's actions, the linear agent's episodes
    _, linear = evaluate(WorldModelsAgent(4, vae, rnn, params), seeds, config, 4)
    for a, b in zip(episodes, linear):
        np.testing.assert_array_equal(a.action, b.action)
    # the label of the action taken at an episode's last step is how the episode ended
    last = {int(ep): fail for ep, fail in zip(data["episode"], data["fail"][:, -1])}
    for e in episodes:
        assert last[e.index] == (1 if e.outcome in ("collision", "out_of_map") else 0)
    assert any(e.outcome in ("collision", "out_of_map") for e in episodes)
    assert "crops" not in data
    # keep_safe 0: only rows where some labelled action fails
    rec = la.Recorder(4, vae, rnn, params, None, None, 0.5, 0.0, 10, seed=0)
    evaluate(rec, seeds, config, 4)
    data = rec.data()
    assert (data["fail"] > 0).any(axis=1).all()


def test_recorder_keeps_the_frames_crops_in_order():
    vae, rnn, params = random_agent(5)
    config = sn.EnvConfig(max_steps=20)
    rec = la.Recorder(3, vae, rnn, params, None, None, 0.0, 1.0, 10, seed=0, pixels=True)
    _, episodes = evaluate(rec, evaluation_seeds(9, 3), config, 3)
    data = rec.data()
    size = head_lib.pixel_size(64)
    assert data["crops"].shape == (len(data["x"]), 3, size) and data["crops"].dtype == np.uint8
    for e in episodes:
        c = data["crops"][data["episode"] == e.index]  # this episode's rows, in step order
        assert len(c) == e.length
        np.testing.assert_array_equal(c[0, 1], c[0, 0])  # the first frame repeated
        np.testing.assert_array_equal(c[0, 2], c[0, 0])
        np.testing.assert_array_equal(c[1:, 1], c[:-1, 0])  # then the frame before
        np.testing.assert_array_equal(c[2:, 2], c[:-2, 0])
        assert len(np.unique(c[:, 0], axis=0)) > 1  # the robot moves: the crops change
    if len(data["picture_images"]):
        np.testing.assert_array_equal(
            data["picture_crops"][:, 0], head_lib.crops(data["picture_images"])
        )


# ---------------------------------------------------------------------------
# 07b_train_lookahead.py and 08 --planner on random models saved as 03, 04 and 07 would
# ---------------------------------------------------------------------------
@pytest.fixture()
def data_dir(tmp_path):
    d = tmp_path / "data"
    (d / "models").mkdir(parents=True)
    vae, rnn, params = random_agent(6)
    controller = Controller(Z, HIDDEN)
    controller.set_flat(params[0])
    sidecars = {
        "vae": (vae, {"config": vae.config()}),
        "rnn_dream": (rnn, {"config": rnn.config()}),
        "controller": (controller, {"config": controller.config(), "rnn_mode": "dream"}),
    }
    for name, (model, sidecar) in sidecars.items():
        serializers.save_npz(d / "models" / f"{name}.npz", model)
        manifest.write_json(d / "models" / f"{name}.json", sidecar)
    return d


SMALL = ("--episodes", 8, "--epochs", 2, "--batch-size", 64, "--width", 16, "--n-envs", 4)


def test_train_lookahead_writes_the_head_its_log_and_picture_and_resumes(data_dir, tmp_path):
    proc = run("07b_train_lookahead.py", *SMALL, "--rounds", 2, "--data-dir", data_dir)
    models = data_dir / "models"
    sidecar = json.loads((models / "lookahead.json").read_text())
    assert sidecar["rounds"] == 2 and sidecar["epochs"] == 2
    assert sidecar["config"]["width"] == 16
    assert sidecar["config"]["members"] == head_lib.MEMBERS == 3
    assert sidecar["config"]["trunk"] == "conv"  # the default with pixels
    log = (models / "lookahead_log.csv").read_text().splitlines()
    assert log[0].startswith("epochs,round,epoch,rows,train_loss,auc_3") and len(log) == 5
    assert (data_dir / "lookahead_data" / "round_2.npz").exists()
    assert "round 2 epoch 2" in proc.stdout
    events, batches = assert_events_match_log(
        data_dir / "runs" / "lookahead", models / "lookahead_log.csv"
    )
    assert "auc_10" in events["scalars"] and not batches
    rnn, _ = saved_models.load_rnn(str(data_dir), "dream", Z)
    head, _ = saved_models.load_lookahead(str(data_dir), rnn)
    assert isinstance(head, head_lib.LookaheadEnsemble) and len(head) == 3
    # The same run in two sittings (as after an interruption) gives the same head.
    other = tmp_path / "other"
    other.mkdir()
    for name in ("vae", "rnn_dream", "controller"):
        for ext in ("npz", "json"):
            (other / "models").mkdir(exist_ok=True)
            (other / "models" / f"{name}.{ext}").write_bytes(
                (models / f"{name}.{ext}").read_bytes()
            )
    # Three sittings: round 1; then round 2 stopped after one batch by --max-iterations
    # (a snapshot mid-epoch, with the epoch's partial loss); then the rest.
    run("07b_train_lookahead.py", *SMALL, "--rounds", 1, "--data-dir", other)
    budget = ("--rounds", 2, "--resume", "--max-iterations", 1, "--data-dir", other)
    stopped = run("07b_train_lookahead.py", *SMALL, *budget)
    assert "stopped after 1 batches" in stopped.stdout and "epoch 3, batch 1" in stopped.stdout
    run("07b_train_lookahead.py", *SMALL, "--rounds", 2, "--resume", "--data-dir", other)
    again, _ = saved_models.load_lookahead(str(other), rnn)
    for (name, p), (_, q) in zip(sorted(head.namedparams()), sorted(again.namedparams())):
        np.testing.assert_array_equal(p.array, q.array, err_msg=name)
    untimed = [line.rsplit(",", 1)[0] for line in log]  # the last column is seconds
    resumed = (other / "models" / "lookahead_log.csv").read_text().splitlines()
    assert [line.rsplit(",", 1)[0] for line in resumed] == untimed
    assert_events_match_log(other / "runs" / "lookahead", other / "models" / "lookahead_log.csv")
    # Resuming with another number of epochs per round is refused: the run's epochs
    # would map to other rounds.
    line = one_line_error(run_here("07b_train_lookahead.py", *SMALL[:2], "--epochs", 3, *SMALL[4:],
                                   "--rounds", 2, "--resume", "--data-dir", other))  # fmt: skip
    assert "other epochs" in line
    # A saved round played for another C is not reused by a new run.
    for name in ("lookahead.npz", "lookahead.json", "lookahead_snapshot.npz"):
        (other / "models" / name).unlink()
    c = other / "models" / "controller.npz"
    serializers.save_npz(c, Controller(Z, HIDDEN))  # another C: its own random weights
    line = one_line_error(run_here("07b_train_lookahead.py", *SMALL, "--data-dir", other))
    assert "round_1.npz was played with other controller_sha1" in line and "--overwrite" in line
    assert not (other / "models" / "lookahead.npz").exists()
    # A trained head is not replaced without --overwrite.
    before = (models / "lookahead.npz").read_bytes()
    line = one_line_error(run_here("07b_train_lookahead.py", *SMALL, "--data-dir", data_dir))
    assert "--overwrite" in line
    assert (models / "lookahead.npz").read_bytes() == before
    # Resuming with another number of heads is refused, in one line, before any work.
    other_heads = ("--resume", "--heads", 2, "--data-dir", data_dir)
    line = one_line_error(run_here("07b_train_lookahead.py", *SMALL, *other_heads))
    assert "--heads 3" in line
    assert (models / "lookahead.npz").read_bytes() == before
    # So is resuming with another trunk.
    other_trunk = ("--resume", "--trunk", "dense", "--data-dir", data_dir)
    line = one_line_error(run_here("07b_train_lookahead.py", *SMALL, *other_trunk))
    assert "--trunk conv" in line
    assert (models / "lookahead.npz").read_bytes() == before


def test_train_lookahead_ctrl_c_before_the_first_epoch_says_nothing_is_saved(data_dir):
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "07b_train_lookahead.py"), "--episodes", "400",
         "--n-envs", "4", "--width", "8", "--no-pixels", "--data-dir", str(data_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )  # fmt: skip
    assert proc.stdout.readline().startswith("train_lookahead:")
    # Round 1 is playing its 400 episodes once its bar shows (however loaded the machine).
    seen = b""
    while b"play and label" not in seen:
        chunk = os.read(proc.stderr.fileno(), 256)
        assert chunk, seen  # the script ended before it began to play
        seen += chunk
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    line = one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, "", err))
    assert "before the first snapshot" in line and "without --resume" in line
    assert not (data_dir / "models" / "lookahead_snapshot.npz").exists()


def test_train_lookahead_no_pixels_and_its_refusals(data_dir):
    tiny = (*SMALL, "--rounds", 1, "--heads", 1, "--epochs", 1, "--data-dir", data_dir)
    run("07b_train_lookahead.py", *tiny, "--no-pixels")
    models = data_dir / "models"
    config = json.loads((models / "lookahead.json").read_text())["config"]
    assert config["pixels"] == 0 and config["trunk"] == "dense"
    with np.load(data_dir / "lookahead_data" / "round_1.npz") as f:
        assert "crops" not in f.files
    before = (models / "lookahead.npz").read_bytes()
    # Resuming a head without pixels as one with them is refused, in one line.
    line = one_line_error(run_here("07b_train_lookahead.py", *tiny, "--resume"))
    assert "--no-pixels" in line
    assert (models / "lookahead.npz").read_bytes() == before
    # So is training a head with pixels on saved rows that have no crops.
    for name in ("lookahead.npz", "lookahead.json", "lookahead_snapshot.npz"):
        (models / name).unlink()
    line = one_line_error(run_here("07b_train_lookahead.py", *tiny))
    assert "no frames' crops" in line and "--overwrite" in line
    assert not (models / "lookahead.npz").exists()


@pytest.mark.parametrize("args, words", bad_flags("07b_train_lookahead.py"))
def test_train_lookahead_refuses_bad_flags(args, words, tmp_path):
    assert_refused("07b_train_lookahead.py", args, words, tmp_path)


def test_train_lookahead_needs_the_agent(tmp_path):
    line = one_line_error(run_here("07b_train_lookahead.py", "--data-dir", tmp_path))
    assert "07_train_controller.py" in line
    assert not (tmp_path / "lookahead_data").exists()


def test_08_lookahead_planner_row(data_dir, tmp_path):
    line = one_line_error(
        run_here(
            "08_test_controller.py",
            "--planner",
            "--agent-only",
            "--episodes",
            2,
            "--data-dir",
            data_dir,
        )
    )
    assert "07b_train_lookahead.py" in line and "--plan-with return" in line
    run("07b_train_lookahead.py", *SMALL, "--rounds", 1, "--data-dir", data_dir)
    out = tmp_path / "r.json"
    proc = run(
        "08_test_controller.py", "--planner", "--plan-threshold", 0.2, "--plan-grid", 5,
        "--episodes", 3, "--max-steps", 20, "--agent-only", "--record", 0, "--out", out,
        "--data-dir", data_dir,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert set(report) == {"world_models", "world_models_planner", "meta"}
    meta = report["meta"]["planner"]
    assert meta == {"plan_with": "lookahead", "grid": 5, "threshold": 0.2, "cost": la.COST,
                    "horizon": la.HORIZON}  # fmt: skip
    row = report["world_models_planner"]  # replaced steps over its steps, to 4 decimals
    replaced = row["replaced_fraction"] * row["env_steps"]
    assert replaced == pytest.approx(round(replaced), abs=0.005) and row["env_steps"] >= 3
    assert "| world_models_planner |" in proc.stdout
    # At threshold 1 nothing is riskier than allowed: the planner is C, step for step.
    run("08_test_controller.py", "--planner", "--plan-threshold", 1, "--episodes", 3,
        "--max-steps", 20, "--agent-only", "--record", 0, "--out", out, "--data-dir", data_dir)  # fmt: skip
    report = json.loads(out.read_text())
    planner = report.pop("world_models_planner")
    assert planner.pop("replaced_fraction") == 0.0
    linear = report["world_models"]
    assert {k: planner[k] for k in linear if k != "seconds"} == {
        k: v for k, v in linear.items() if k != "seconds"
    }
    line = one_line_error(
        run_here(
            "08_test_controller.py",
            "--planner",
            "--horizon",
            4,
            "--agent-only",
            "--episodes",
            1,
            "--data-dir",
            data_dir,
        )
    )
    assert "not 4" in line and "07b_train_lookahead.py" in line
