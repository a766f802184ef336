"""M's outcome head (04 --outcome-head): calibrated ending probabilities, a bounded
running reward, its loss, the soft dream it implies, and the per-step outcome codes
it learns from."""

import json

import numpy as np
import pytest
from cli_helpers import one_line_error, run_here
from test_rnn_scripts import (  # noqa: F401  (trained_v: a fixture)
    copy_data,
    held_out_by_hand,
    log_rows,
    train,
    trained_v,
)

from lib.control.agent import dream_rollouts
from lib.data import latents
from lib.diagnostics.world_model import predicts_collision
from lib.env import socnavenv as sn
from lib.models.controller import n_params
from lib.models.mdn_rnn import (
    MDNRNN,
    OUTCOME_CLASSES,
    OUTCOME_REWARDS,
    MDNRNNLoss,
    reward_and_continue,
)


def hand_made(bias, shaping=0.0, weights=None, bound=0.02):
    """An outcome-head M whose heads ignore h: fixed logits `bias`, shaping raw `shaping`."""
    m = MDNRNN(z_size=3, hidden_size=4, outcome_head=True, shaping_bound=bound,
               outcome_weights=weights)  # fmt: skip
    m.outcome.W.array[:] = 0
    m.outcome.b.array[:] = np.asarray(bias, np.float32)
    m.shaping.W.array[:] = 0
    m.shaping.b.array[:] = shaping
    return m


def step(m, n=2):
    return m.step(np.zeros((n, 3), np.float32), np.zeros((n, 2), np.float32))


def test_expected_reward_done_and_calibration_by_hand():
    bias = np.log([0.7, 0.1, 0.15, 0.05])
    out = step(hand_made(bias, shaping=0.0))
    p = np.array([0.7, 0.1, 0.15, 0.05])
    np.testing.assert_allclose(out.outcome[0], p, rtol=1e-5)
    # running pays -bound * sigmoid(0) = -0.01; the endings pay +1, -1, -0.5
    expected = 0.7 * -0.01 + 0.1 * 1.0 + 0.15 * -1.0 + 0.05 * -0.5
    np.testing.assert_allclose(out.reward, [expected] * 2, rtol=1e-5)
    np.testing.assert_allclose(out.done_logit, [np.log(0.3 / 0.7)] * 2, rtol=1e-5)
    reward, p_continue = reward_and_continue(out)
    np.testing.assert_allclose(reward, out.reward)
    np.testing.assert_allclose(p_continue, [0.7, 0.7], rtol=1e-5)
    # A head trained with class weights w is calibrated by dividing by w.
    weighted = step(hand_made(bias + np.log([1, 10, 20, 5]), weights=[1, 10, 20, 5]))
    np.testing.assert_allclose(weighted.outcome[0], p, rtol=1e-5)
    assert list(OUTCOME_CLASSES) == [sn.OUTCOMES[k] for k in range(4)]


def test_no_prediction_pays_more_than_the_task():
    rng = np.random.default_rng(0)
    m = MDNRNN(z_size=3, hidden_size=4, outcome_head=True, shaping_bound=0.02)
    m.outcome.W.array[:] = rng.normal(0, 30, m.outcome.W.shape)
    m.shaping.W.array[:] = rng.normal(0, 30, m.shaping.W.shape)
    out = m.step(rng.normal(0, 3, (500, 3)).astype(np.float32),
                 rng.normal(0, 3, (500, 2)).astype(np.float32))  # fmt: skip
    assert out.reward.max() <= sn.REACH_REWARD + 1e-6
    assert out.reward.min() >= sn.COLLISION_REWARD - 1e-6
    # the running reward alone stays in [-bound, 0]
    running = hand_made([10, -10, -10, -10], shaping=50.0)
    assert -0.02 - 1e-6 <= step(running).reward[0] <= 0


def test_sequence_forward_equals_steps():
    rng = np.random.default_rng(1)
    m = MDNRNN(z_size=3, hidden_size=4, outcome_head=True, outcome_weights=[1, 2, 3, 4])
    m.outcome.W.array[:] = rng.normal(0, 1, m.outcome.W.shape)
    z = rng.normal(size=(2, 5, 3)).astype(np.float32)
    a = rng.normal(size=(2, 5, 2)).astype(np.float32)
    seq = m(z, a)
    state = None
    for t in range(5):
        out = m.step(z[:, t], a[:, t], state)
        state = out.state
        np.testing.assert_allclose(out.reward, seq.reward.array[:, t], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out.done_logit, seq.done_logit.array[:, t], rtol=1e-4)


def test_loss_by_hand_and_timeout_steps():
    m = hand_made(np.zeros(4), shaping=0.0, weights=[1, 2, 3, 4], bound=0.02)
    z = np.zeros((1, 3, 3), np.float32)
    a = np.zeros((1, 3, 2), np.float32)
    codes = np.array([[sn.RUNNING, sn.RUNNING, sn.COLLISION]], np.int8)
    reward = np.array([[-0.01, -0.005, -1.0]], np.float32)
    obs = {}
    import chainer

    reporter = chainer.Reporter()
    loss_fn = MDNRNNLoss(m)
    reporter.add_observer("m", loss_fn)
    with reporter.scope(obs):
        loss_fn(z, a, z, None, reward, None, None, codes)
    # uniform logits: CE = log 4 for every step, weighted 1, 1, 3 over 3 steps
    assert float(obs["m/done_loss"].array) == pytest.approx(np.log(4) * 5 / 3, rel=1e-5)
    # running steps: sigmoid(0) = 0.5 against 0.5 and 0.25 of the bound
    assert float(obs["m/reward_loss"].array) == pytest.approx((0 + 0.25**2) / 2, rel=1e-5)
    # a timeout step is "running" for the ending and out of the reward loss
    codes[0, 2] = sn.TIMEOUT
    reward[0, 2] = sn.TIMEOUT_REWARD
    with reporter.scope(obs):
        loss_fn(z, a, z, None, reward, None, None, codes)
    assert float(obs["m/done_loss"].array) == pytest.approx(np.log(4), rel=1e-5)
    with pytest.raises(ValueError, match="outcome"):
        loss_fn(z, a, z, None, reward)


def test_the_head_learns_which_action_collides():
    """Collision exactly when action[0] > 0: a few hundred Adam steps separate them."""
    import chainer

    rng = np.random.default_rng(0)
    m = MDNRNN(z_size=2, hidden_size=16, outcome_head=True, shaping_bound=0.02)
    opt = chainer.optimizers.Adam(alpha=1e-2)
    opt.setup(m)
    loss_fn = MDNRNNLoss(m)
    for _ in range(300):
        a = rng.uniform(-1, 1, (64, 1, 2)).astype(np.float32)
        z = rng.normal(size=(64, 1, 2)).astype(np.float32)
        codes = np.where(a[..., 0] > 0, sn.COLLISION, sn.RUNNING).astype(np.int8)
        reward = np.where(codes == sn.COLLISION, -1.0, -0.005).astype(np.float32)
        loss, _ = loss_fn(z, a, z, None, reward, None, None, codes)
        m.cleargrads()
        loss.backward()
        opt.update()
    a = np.array([[0.8, 0], [-0.8, 0]], np.float32)
    out = m.step(np.zeros((2, 2), np.float32), a)
    assert out.outcome[0, sn.COLLISION] > 0.9 and out.outcome[1, sn.RUNNING] > 0.9
    assert predicts_collision(out)[0] and out.done_logit[0] > 0 > out.done_logit[1]


def test_soft_dream_is_the_expected_return():
    """p(continue) = q and reward r every step: return = r (1 - q^T) / (1 - q) + timeout."""
    q = 0.9
    bias = np.log([q, (1 - q) / 3, (1 - q) / 3, (1 - q) / 3])
    m = hand_made(bias, shaping=0.0)
    r = float(step(m).reward[0])
    params = np.zeros((1, n_params(3, 4)), np.float32)
    returns, lengths = dream_rollouts(
        m, params, np.zeros(3, int), np.zeros((3, 3), np.float32), 1.0,
        np.random.default_rng(0), max_steps=20,
    )  # fmt: skip
    expected = r * (1 - q**20) / (1 - q) + q**20 * sn.TIMEOUT_REWARD
    np.testing.assert_allclose(returns, expected, rtol=1e-5)
    assert list(lengths) == [int(np.ceil(np.log(0.5) / np.log(q)))] * 3  # P(running) >= 1/2
    # how the dreams end: each ending 1/3 of what does not run for 20 steps, then timeout
    *_, ends = dream_rollouts(
        m, params, np.zeros(3, int), np.zeros((3, 3), np.float32), 1.0,
        np.random.default_rng(0), max_steps=20, endings=True,
    )  # fmt: skip
    third = (1 - q**20) / 3
    np.testing.assert_allclose(ends, [[third, third, third, q**20]] * 3, rtol=1e-5)
    # the dream's best possible return is the task's: +1, however M is set
    winner = hand_made([-30.0, 30.0, -30.0, -30.0])
    best, _ = dream_rollouts(winner, params, np.zeros(1, int), np.zeros((1, 3), np.float32),
                             1.0, np.random.default_rng(0))  # fmt: skip
    assert best[0] == pytest.approx(1.0, abs=1e-4)


def test_step_outcome_codes():
    done = np.array([False, False, True])
    for name in ("success", "collision", "out_of_map", "timeout"):
        codes = latents.step_outcomes({"done": done, "reward": np.zeros(3), "outcome": name})
        assert list(codes) == [0, 0, sn.OUTCOMES.index(name)]
    # without the field, from the last reward
    for last, code in ((1.0, sn.SUCCESS), (-1.0, sn.COLLISION), (-0.5, sn.OUT_OF_MAP)):
        ep = {"done": done, "reward": np.array([-0.01, -0.01, last])}
        assert latents.step_outcomes(ep)[-1] == code
    long = {
        "done": np.arange(sn.MAX_STEPS) == sn.MAX_STEPS - 1,
        "reward": np.full(sn.MAX_STEPS, -0.5),
    }
    assert latents.step_outcomes(long)[-1] == sn.TIMEOUT
    assert list(latents.step_outcomes({"done": [False, False], "reward": [0, 0]})) == [0, 0]
    assert OUTCOME_REWARDS[sn.COLLISION] == sn.COLLISION_REWARD


def test_04_outcome_head_trains_and_records_its_settings(trained_v, tmp_path):  # noqa: F811
    d = copy_data(trained_v, tmp_path)
    train(d, "dream", "--outcome-head")
    config = json.loads((d / "models" / "rnn_dream.json").read_text())["config"]
    assert config["outcome_head"] is True
    assert config["reward_head"] is False and config["done_head"] is False
    assert config["outcome_weights"][0] == 1.0 and all(w >= 1 for w in config["outcome_weights"])
    assert 0 < config["shaping_bound"] < 0.1
    rows = log_rows(d, "dream")
    assert np.isfinite(float(rows[-1]["train_done_loss"]))
    for key, value in held_out_by_hand(d, "dream").items():  # the log tells the truth
        assert float(rows[-1][key]) == pytest.approx(value, rel=1e-4, abs=1e-7), key
    # the cache holds every step's outcome, ending on the episode's
    data, _ = latents.encode_split(str(d / "rnn_data" / "train"), *_vae(d))
    ends = data.outcome[data.step_offsets[1:] - 1]
    assert (ends != sn.RUNNING).all() and (
        np.delete(data.outcome, data.step_offsets[1:] - 1) == 0
    ).all()


def _vae(d):
    from lib.models import saved_models

    vae, _ = saved_models.load_vae(str(d))
    return vae, str(d / "models" / "vae.npz")


def test_04_outcome_head_needs_heads(trained_v, tmp_path):  # noqa: F811
    d = copy_data(trained_v, tmp_path)
    line = one_line_error(run_here("04_train_rnn.py", "--mode", "window", "--outcome-head",
                              "--data-dir", d))  # fmt: skip
    assert "--outcome-head" in line and "reward or dream" in line
    assert not (d / "models" / "rnn_window.npz").exists()
