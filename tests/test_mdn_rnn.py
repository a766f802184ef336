"""lib.models.mdn_rnn: the MDN-LSTM's likelihood, sampling, masking, stepping and saving."""

import json

import chainer
import numpy as np
import pytest
from chainer import gradient_check, serializers
from scipy import stats

from lib.kernels import mdn
from lib.models import mdn_rnn
from lib.models.mdn_rnn import MDNRNN, MDNRNNLoss, MixtureParams, sample

Z, K = 3, 4  # small sizes for the density tests
LO, HI = -7.0, 4.0


def _raw(rng, n, z=Z, k=K, sigma_range=(-1.0, 0.5)):
    """(n, 3 * k * z) float32 raw mixture head with log-sigma in `sigma_range`."""
    raw = rng.standard_normal((n, 3, k, z)).astype(np.float32)
    raw[:, 2] = rng.uniform(*sigma_range, (n, k, z))
    return raw.reshape(n, -1)


def _scipy_nll(raw, target, mask, z=Z, k=K):
    """Masked mean NLL from scipy.stats.norm densities, summed in plain NumPy."""
    r = raw.astype(np.float64).reshape(-1, 3, k, z)
    logit, mu, log_sigma = r[:, 0], r[:, 1], np.clip(r[:, 2], LO, HI)
    pi = np.exp(logit - logit.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    dens = (pi * stats.norm.pdf(target[:, None, :], loc=mu, scale=np.exp(log_sigma))).sum(axis=1)
    return -(np.log(dens) * mask[:, None]).sum() / (mask.sum() * z)


@pytest.mark.parametrize("fast", [True, False])
def test_nll_equals_scipy_mixture_density(fast):
    rng = np.random.default_rng(0)
    raw = _raw(rng, 50)
    target = rng.standard_normal((50, Z)).astype(np.float32)
    mask = (rng.random(50) < 0.7).astype(np.float32)
    with chainer.using_config("fast_lstm", fast):
        nll = mdn_rnn.mdn_nll(chainer.Variable(raw), target, mask, Z, K, LO, HI)
    assert nll.dtype == np.float32
    np.testing.assert_allclose(float(nll.array), _scipy_nll(raw, target, mask), rtol=2e-6)


def test_fused_nll_gradient_equals_plain_chainer():
    rng = np.random.default_rng(1)
    raw = _raw(rng, 40, sigma_range=(-8.0, 5.0))  # some entries beyond the clamp
    target = rng.standard_normal((40, Z)).astype(np.float32)
    mask = (rng.random(40) < 0.8).astype(np.float32)
    grads = []
    for fast in (True, False):
        x = chainer.Variable(raw.copy())
        with chainer.using_config("fast_lstm", fast):
            mdn_rnn.mdn_nll(x, target, mask, Z, K, LO, HI).backward()
        grads.append(x.grad)
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    clamped = raw.reshape(40, 3, K, Z)[:, 2]
    outside = (clamped < LO) | (clamped > HI)
    assert outside.any() and np.all(grads[0].reshape(40, 3, K, Z)[:, 2][outside] == 0)
    assert np.all(grads[0][mask == 0] == 0)


def test_fused_nll_check_backward():
    rng = np.random.default_rng(2)
    raw = _raw(rng, 6).astype(np.float64)
    target = rng.standard_normal((6, Z))
    mask = np.array([1, 1, 0, 1, 1, 1], np.float64)

    def f(x):
        return mdn.MDNNLL(K, LO, HI).apply((x, target, mask))[0]

    gradient_check.check_backward(f, (raw,), np.array(1.3), dtype=np.float64, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fast", [True, False])
def test_nll_is_finite_for_tiny_sigma_and_far_targets(fast):
    raw = np.zeros((2, 3, K, Z), np.float32)
    raw[:, 2] = -1000.0  # sigma = e^-1000: clamped to e^LO
    target = np.zeros((2, Z), np.float32)
    target[1] = 1e20  # absurdly far, z-score squared overflows float32
    x = chainer.Variable(raw.reshape(2, -1))
    with chainer.using_config("fast_lstm", fast):
        nll = mdn_rnn.mdn_nll(x, target, np.ones(2, np.float32), Z, K, LO, HI)
        nll.backward()
    assert np.isfinite(nll.array) and np.isfinite(x.grad).all()
    # Row 0 sits on the means: its NLL is that of a Gaussian with log-sigma = LO.
    row0 = mdn_rnn.mdn_nll(raw.reshape(2, -1)[:1], target[:1], np.ones(1, np.float32), Z, K, LO, HI)
    np.testing.assert_allclose(float(row0.array), LO + 0.5 * np.log(2 * np.pi), rtol=1e-6)


def _uniform_params(logit, mu, log_sigma, agents):
    """MixtureParams with the same (Z, K) mixture for every agent."""
    return MixtureParams(
        *(
            np.broadcast_to(np.asarray(p, np.float32), (agents,) + np.shape(p))
            for p in (logit, mu, log_sigma)
        )
    )


def test_sampling_matches_mixture_moments_at_tau_1():
    logit = np.log([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    mu = np.array([[-2.0, 0.0, 3.0], [1.0, -1.0, 0.5]])
    sigma = np.array([[0.5, 1.0, 0.3], [0.2, 0.4, 2.0]])
    n = 200_000
    z = sample(_uniform_params(logit, mu, np.log(sigma), n), 1.0, np.random.default_rng(0))
    assert z.shape == (n, 2) and z.dtype == np.float32
    pi = np.exp(logit)
    mean = (pi * mu).sum(axis=1)
    var = (pi * (sigma**2 + mu**2)).sum(axis=1) - mean**2
    assert np.all(np.abs(z.mean(axis=0) - mean) < 5 * np.sqrt(var / n))
    np.testing.assert_allclose(z.var(axis=0), var, rtol=0.02)


def test_temperature_sharpens_weights_and_scales_sigma():
    # Far-apart components: the sample tells which component it came from.
    logit = np.log([[0.2, 0.3, 0.5]])
    mu = np.array([[-100.0, 0.0, 100.0]])
    sigma = np.array([[1.0, 2.0, 3.0]])
    n, tau = 100_000, 2.0
    z = sample(_uniform_params(logit, mu, np.log(sigma), n), tau, np.random.default_rng(1))[:, 0]
    pick = np.digitize(z, [-50.0, 50.0])
    expected = np.exp(logit[0] / tau) / np.exp(logit[0] / tau).sum()
    np.testing.assert_allclose(np.bincount(pick, minlength=3) / n, expected, atol=0.01)
    for k in range(3):
        np.testing.assert_allclose(z[pick == k].std(), sigma[0, k] * np.sqrt(tau), rtol=0.03)


def test_sampling_collapses_to_most_likely_mean_as_tau_goes_to_0():
    rng = np.random.default_rng(2)
    logit = rng.standard_normal((7, Z, K)).astype(np.float32)
    mu = rng.standard_normal((7, Z, K)).astype(np.float32)
    log_sigma = np.zeros((7, Z, K), np.float32)
    best = np.take_along_axis(mu, logit.argmax(axis=-1)[..., None], axis=-1)[..., 0]
    params = MixtureParams(logit, mu, log_sigma)
    np.testing.assert_array_equal(sample(params, 0.0, rng), best)
    np.testing.assert_allclose(sample(params, 1e-6, rng), best, atol=0.01)
    with pytest.raises(ValueError):
        sample(params, -1.0, rng)


def test_numba_sampling_equals_array_ops_path():
    rng = np.random.default_rng(9)
    params = MixtureParams(*(rng.standard_normal((300, Z, K)).astype(np.float32) for _ in range(3)))
    fast = sample(params, 0.7, np.random.default_rng(3))
    draws = np.random.default_rng(3)
    u = draws.random((300, Z), dtype=np.float32)
    noise = draws.standard_normal((300, Z), dtype=np.float32)
    plain = mdn_rnn._sample_xp(*params, 0.7, u, noise)
    # Float rounding may flip a pick where u sits on a component boundary.
    assert np.mean(np.abs(fast - plain) > 1e-5) < 1e-3


def test_mask_through_done_keeps_the_done_step():
    done = np.zeros((2, 5), bool)
    done[0, 2] = True
    done[0, 4] = True  # a later done (padding) changes nothing
    np.testing.assert_array_equal(
        mdn_rnn.mask_through_done(done), [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    )


def _batch(rng, batch=3, steps=6, z=8, a=2):
    """Random (z, a, z_next, reward, done) sequences."""
    return (
        rng.standard_normal((batch, steps, z)).astype(np.float32),
        rng.uniform(-1, 1, (batch, steps, a)).astype(np.float32),
        rng.standard_normal((batch, steps, z)).astype(np.float32),
        rng.standard_normal((batch, steps)).astype(np.float32),
        rng.random((batch, steps)) < 0.3,
    )


def _loss_and_grads(model, loss_fn, z, a, z_next, mask, reward, done):
    model.cleargrads()
    loss, _ = loss_fn(z, a, z_next, mask, reward=reward, done=done)
    loss.backward()
    return float(loss.array), {name: p.grad.copy() for name, p in model.namedparams()}


@pytest.mark.parametrize("fast", [True, False])
def test_masked_steps_change_nothing(fast):
    rng = np.random.default_rng(3)
    model = MDNRNN(z_size=8, hidden_size=16, reward_head=True, done_head=True)
    loss_fn = MDNRNNLoss(model, done_pos_weight=3.0)
    z, a, z_next, reward, done = _batch(rng)
    done[:] = False
    done[0, 2] = done[1, 4] = True
    mask = mdn_rnn.mask_through_done(done)
    with chainer.using_config("fast_lstm", fast):
        base = _loss_and_grads(model, loss_fn, z, a, z_next, mask, reward, done)
        after = mask == 0
        garbage = [x.copy() for x in (z, a, z_next, reward)]
        for x in garbage:
            x[after] = 1e3 * rng.standard_normal(x[after].shape)
        done2 = done.copy()
        done2[after] = True
        changed = _loss_and_grads(model, loss_fn, *garbage[:3], mask, garbage[3], done2)
    assert base[0] == pytest.approx(changed[0], rel=1e-6)
    for name, g in base[1].items():
        np.testing.assert_allclose(changed[1][name], g, rtol=1e-5, atol=1e-7, err_msg=name)


def test_loss_reports_and_matches_hand_computed_heads():
    rng = np.random.default_rng(4)
    model = MDNRNN(z_size=8, hidden_size=16, reward_head=True, done_head=True)
    loss_fn = MDNRNNLoss(model, reward_weight=0.5, done_weight=2.0, done_pos_weight=4.0)
    z, a, z_next, reward, done = _batch(rng)
    mask = np.ones(done.shape, np.float32)
    mask[2, 3:] = 0
    reporter = chainer.Reporter()
    reporter.add_observer("main", loss_fn)
    observation = {}
    with reporter.scope(observation):
        loss, _ = loss_fn(z, a, z_next, mask, reward=reward, done=done)
    out = model(z, a)
    r_pred, logit = out.reward.array, out.done_logit.array.astype(np.float64)
    p = 1 / (1 + np.exp(-logit))
    bce = -(4.0 * done * np.log(p) + (1 - done) * np.log(1 - p))
    reward_loss = ((r_pred - reward) ** 2 * mask).sum() / mask.sum()
    done_loss = (bce * mask).sum() / mask.sum()
    assert set(observation) == {"main/loss", "main/nll", "main/reward_loss", "main/done_loss"}
    np.testing.assert_allclose(float(observation["main/reward_loss"].array), reward_loss, rtol=1e-5)
    np.testing.assert_allclose(float(observation["main/done_loss"].array), done_loss, rtol=1e-5)
    total = float(observation["main/nll"].array) + 0.5 * reward_loss + 2.0 * done_loss
    np.testing.assert_allclose(float(loss.array), total, rtol=1e-5)
    with pytest.raises(ValueError, match="reward"):
        loss_fn(z, a, z_next)


def test_step_equals_sequence_forward():
    rng = np.random.default_rng(5)
    model = MDNRNN(z_size=8, hidden_size=16, n_mixtures=3, reward_head=True, done_head=True)
    z, a = _batch(rng, batch=4, steps=5)[:2]
    with chainer.no_backprop_mode():
        seq = model(z, a)
    params = model.split(seq.mixture.array)
    state = None
    for t in range(z.shape[1]):
        out = model.step(z[:, t], a[:, t], state)
        state = out.state
        np.testing.assert_allclose(out.h, seq.h.array[:, t], atol=1e-6)
        for got, want in zip(out.mixture, params, strict=True):
            assert got.shape == (4, 8, 3)
            np.testing.assert_allclose(got, want[:, t], atol=1e-5)
        np.testing.assert_allclose(out.reward, seq.reward.array[:, t], atol=1e-5)
        np.testing.assert_allclose(out.done_logit, seq.done_logit.array[:, t], atol=1e-5)
    np.testing.assert_allclose(state[1], seq.state[1].array, atol=1e-6)
    assert model.step(z[:, 0], a[:, 0]).reward is not None
    assert MDNRNN(z_size=8, hidden_size=16).step(z[:, 0], a[:, 0]).reward is None


def test_truncated_bptt_state_carry_equals_whole_sequence():
    rng = np.random.default_rng(6)
    model = MDNRNN(z_size=8, hidden_size=16)
    loss_fn = MDNRNNLoss(model)
    z, a, z_next = _batch(rng, steps=8)[:3]
    whole, _ = loss_fn(z, a, z_next)
    first, state = loss_fn(z[:, :5], a[:, :5], z_next[:, :5])
    second, _ = loss_fn(z[:, 5:], a[:, 5:], z_next[:, 5:], state=state)
    np.testing.assert_allclose(
        (5 * float(first.array) + 3 * float(second.array)) / 8, float(whole.array), rtol=1e-5
    )


def test_scheduled_inputs_replace_with_own_predictions():
    rng = np.random.default_rng(8)
    model = MDNRNN(z_size=8, hidden_size=16)
    z, a = _batch(rng, batch=50, steps=6)[:2]
    np.testing.assert_array_equal(model.scheduled_inputs(z, a, 0.0, 1.0, rng), z)
    # At tau = 0 a replaced input is the mean of the predicted likeliest component.
    with chainer.no_backprop_mode():
        predicted = sample(model.split(model(z, a).mixture.array), 0.0, rng)
    mixed = model.scheduled_inputs(z, a, 1.0, 0.0, rng)
    np.testing.assert_array_equal(mixed[:, 0], z[:, 0])
    np.testing.assert_allclose(mixed[:, 1:], predicted[:, :-1], atol=1e-6)
    mixed = model.scheduled_inputs(z, a, 0.3, 0.0, rng)
    replaced = np.all(mixed != z, axis=2)
    assert not replaced[:, 0].any()
    assert 0.2 < replaced[:, 1:].mean() < 0.4


def test_scheduled_inputs_draw_in_the_documented_order():
    """M's samples at all T steps, then the (B, T) uniform: the order 04's training
    has always used, so its results do not change."""
    model = MDNRNN(z_size=8, hidden_size=16)
    z, a = _batch(np.random.default_rng(3), batch=5, steps=7)[:2]
    got = model.scheduled_inputs(z, a, 0.4, 1.0, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    with chainer.no_backprop_mode(), chainer.using_config("train", False):
        predicted = sample(model.split(model(z, a).mixture.array), 1.0, rng)
    swap = rng.random(z.shape[:2]) < 0.4
    swap[:, 0] = False
    want = z.copy()
    want[:, 1:][swap[:, 1:]] = predicted[:, :-1][swap[:, 1:]]
    np.testing.assert_array_equal(got, want)


def test_done_calibration_and_threshold():
    w, p = 50.0, np.array([0.1, 0.5, 0.9])
    weighted = np.log(w * p / (1 - p))  # what a head trained with positive weight w outputs
    np.testing.assert_allclose(mdn_rnn.calibrated_done_logit(weighted, w), np.log(p / (1 - p)))
    assert mdn_rnn.done_logit_threshold() == 0.0  # p > DONE_THRESHOLD = 0.5
    assert mdn_rnn.DONE_THRESHOLD == 0.5
    assert mdn_rnn.done_logit_threshold(w) == pytest.approx(np.log(w))
    assert mdn_rnn.done_logit_threshold(1.0, 0.9) == pytest.approx(np.log(9.0))


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    model = MDNRNN(z_size=8, action_size=3, hidden_size=16, n_mixtures=2, done_head=True)
    for _, p in model.namedparams():
        p.array[...] = rng.standard_normal(p.shape)
    serializers.save_npz(tmp_path / "rnn.npz", model)
    (tmp_path / "rnn.json").write_text(json.dumps(model.config()))
    loaded = MDNRNN(**json.loads((tmp_path / "rnn.json").read_text()))
    serializers.load_npz(tmp_path / "rnn.npz", loaded)
    assert loaded.config() == model.config()
    z = rng.standard_normal((2, 8)).astype(np.float32)
    a = rng.standard_normal((2, 3)).astype(np.float32)
    for got, want in zip(loaded.step(z, a).mixture, model.step(z, a).mixture, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError):
        serializers.load_npz(tmp_path / "rnn.npz", MDNRNN(z_size=8, action_size=3, hidden_size=32))


def test_constructor_rejects_bad_sizes():
    with pytest.raises(ValueError, match="z_size"):
        MDNRNN(z_size=0)
    with pytest.raises(ValueError, match="log-sigma"):
        MDNRNN(log_sigma_min=1.0, log_sigma_max=1.0)


# ---------------------------------------------------------------------------
# The task head on [z, h] (04 --task-weight)
# ---------------------------------------------------------------------------
def test_task_head_reads_z_and_the_state_before_it_as_the_agent_does():
    """The head's input at step t is [z_t, h_t] with h_t M's state before z_t, the
    features the linear C acts on (WorldModelsAgent), also across a BPTT cut."""
    rng = np.random.default_rng(11)
    model = MDNRNN(z_size=8, hidden_size=16, outcome_head=True, task_size=2)
    z, a, *_ = _batch(rng, steps=7)
    h = np.zeros((3, 16), np.float32)
    state, expected = None, []
    for t in range(7):
        expected.append(np.concatenate([z[:, t], h], 1) @ model.task.W.array.T + model.task.b.array)
        out = model.step(z[:, t], a[:, t], state, mixture=False)
        state, h = out.state, out.h
    expected = np.stack(expected, 1).reshape(21, 2)
    whole = model(z, a)
    np.testing.assert_allclose(model.task_prediction(z, whole.h).array, expected, atol=1e-5)
    first = model(z[:, :3], a[:, :3])
    rest = model(z[:, 3:], a[:, 3:], first.state)
    parts = [
        model.task_prediction(z[:, :3], first.h).array.reshape(3, 3, 2),
        model.task_prediction(z[:, 3:], rest.h, first.state[0]).array.reshape(3, 4, 2),
    ]
    np.testing.assert_allclose(np.concatenate(parts, 1).reshape(21, 2), expected, atol=1e-5)


def test_task_loss_is_added_with_its_weight_over_the_unmasked_labelled_steps():
    from lib.models.task_head import task_targets

    rng = np.random.default_rng(12)
    model = MDNRNN(z_size=8, hidden_size=16, reward_head=True, done_head=True, task_size=2)
    z, a, z_next, reward, done = _batch(rng)
    teacher = rng.uniform(-1, 1, (3, 6, 2)).astype(np.float32)
    teacher[1, 2] = np.nan  # an unlabelled step counts nothing
    mask = np.ones(done.shape, np.float32)
    mask[2, 4:] = 0
    reporter = chainer.Reporter()
    plain, task = MDNRNNLoss(model), MDNRNNLoss(model, task_weight=3.0)
    reporter.add_observer("main", task)
    observation = {}
    base, _ = plain(z, a, z_next, mask, reward=reward, done=done)
    with reporter.scope(observation):
        loss, _ = task(z, a, z_next, mask, reward=reward, done=done, teacher=teacher)
    pred = model.task_prediction(z, model(z, a).h).array
    target, labelled = task_targets(teacher.reshape(18, 2))
    err = ((pred - target) ** 2 * labelled * mask.reshape(18, 1)).sum() / mask.sum()
    np.testing.assert_allclose(float(observation["main/task_loss"].array), err, rtol=1e-5)
    np.testing.assert_allclose(float(loss.array), float(base.array) + 3.0 * err, rtol=1e-5)
    # The gradient reaches the LSTM: that is what shapes h.
    model.cleargrads()
    task(z, a, z_next, mask, reward=reward, done=done, teacher=teacher)[0].backward()
    with_task = model.w_h.grad.copy()
    model.cleargrads()
    plain(z, a, z_next, mask, reward=reward, done=done)[0].backward()
    assert np.abs(with_task - model.w_h.grad).max() > 1e-6
    with pytest.raises(ValueError, match="teacher"):
        task(z, a, z_next, mask, reward=reward, done=done)
    with pytest.raises(ValueError, match="task head"):
        MDNRNNLoss(MDNRNN(z_size=8, hidden_size=16), task_weight=1.0)
    with pytest.raises(ValueError, match="task_size"):
        MDNRNN(z_size=8, task_size=-1)


def test_task_head_round_trips_through_the_config(tmp_path):
    model = MDNRNN(z_size=8, hidden_size=16, task_size=2)
    assert model.config()["task_size"] == 2
    assert "task_size" not in MDNRNN(z_size=8, hidden_size=16).config()  # older sidecars alike
    path = str(tmp_path / "m.npz")
    serializers.save_npz(path, model)
    again = MDNRNN(**json.loads(json.dumps(model.config())))
    serializers.load_npz(path, again)
    np.testing.assert_array_equal(again.task.W.array, model.task.W.array)
