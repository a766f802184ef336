"""Model-predictive control inside M: plan a short future at every real step.

Beyond the paper. At each real step `PlannerAgent` starts from M's present
state (the LSTM's (h, c) and V's z of the frame), imagines K action sequences
of H steps in M, scores each by its predicted discounted return, executes the
first action of the best and plans again at the next step.

The proposal is the trained linear C: candidate 0 is C's own closed-loop
rollout (C acts on the imagined z and h at every step), so the planner can only
replace C's action by one that M predicts to be better, and with K = 1 it is the
linear agent. The other candidates are C's closed-loop actions plus an
open-loop offset sequence each, drawn from N(mean, std^2) per step and action;
the cross-entropy method (CEM) refits mean and std to the elite candidates'
offsets between iterations (mean 0, std `sigma` at first). Iterations after the
first replace candidate 0 by the current mean offsets (plain C was scored in
the first). Actions are clipped to the environment's [-1, 1].

Score of a candidate: `sum_t gamma^t S_t r_t` with r_t M's expected reward of
imagined step t and S_t the probability that the episode is still running at
t, the product of M's continue probabilities of the steps before it (both from
`lib.models.mdn_rnn.reward_and_continue`, whatever M's heads). A predicted
collision lowers the score twice: through its reward and by cutting off the
rewards after it. The executed action is the first action of the best-scoring
candidate over all iterations; ties (and anything not better than C by more
than `margin`) go to C.

Batching: all B live agents' K candidates are one batch of B * K rollouts, so M
steps once per imagined step (H times per iteration). The randomness of agent
i (its offsets and, for tau > 0, M's sampling noise) comes from its own
Generator, drawn in a fixed order, so an agent's plan does not depend on which
other agents share its batch (up to floating-point differences of GEMMs of
other shapes). The sampling noise of an imagined step is shared by all of an
agent's candidates and iterations (common random numbers): candidates are
compared on the same imagined future.
"""

from __future__ import annotations

import numpy as np
from chainer import backend

from lib import validate
from lib.control.agent import EpisodeStreams, PlanningAgent
from lib.devices import to_host
from lib.kernels import mdn
from lib.models.controller import act_batch
from lib.models.mdn_rnn import reward_and_continue, sample

# Keys the stream of an episode's seed that draws the planner's noise, apart from V's
# latent noise and the environment's streams drawn from the same seed.
_PLAN_NOISE = 0x91A

# Defaults, chosen on validation episodes (docs/experiments.md, "Issue 12").
HORIZON = 10  # imagined steps (1 s at the env's 0.1 s step)
CANDIDATES = 64
CEM_ITERS = 2
SIGMA = 1.0  # initial std of the action offsets, in action units (clipped to [-1, 1])
TAU = 0.0  # M's temperature in the plan: 0 follows the mean of the likeliest component
GAMMA = 0.95  # discount per imagined step
# Predicted return a plan must gain over C's to replace C's action (reward units: a
# collision is -1). With the free reward head of the paper's M a margin of 0.2 was
# needed (below it the plan followed the head's noise). With the outcome head and a
# C fitted by imitation (07 --imitate), sigma 2 without a margin lost 15 points to C
# (M's errors outvote a good C); sigma 1 with a margin of 0.05 was the best of those
# tried, level with C (docs/experiments.md).
MARGIN = 0.05


class PlanSettings:
    """The planner's knobs, checked once (`ValueError` names the bad one).

    Args:
        horizon: H, imagined steps per candidate (>= 1).
        candidates: K, action sequences per agent and iteration (>= 1).
        cem_iters: CEM iterations (>= 1; 1 is plain random shooting around C).
        sigma: initial std of the action offsets (>= 0).
        tau: M's sampling temperature in the plan (>= 0).
        gamma: discount per imagined step, in (0, 1].
        elites: candidates CEM refits to; default max(1, K // 8).
        margin: a candidate replaces C's action only when its score beats C's
            by more than this (>= 0).
        done_pos_weight: the done head's training-time positive weight (M's
            sidecar `done_pos_weight`).
    """

    def __init__(
        self,
        horizon=HORIZON,
        candidates=CANDIDATES,
        cem_iters=CEM_ITERS,
        sigma=SIGMA,
        tau=TAU,
        gamma=GAMMA,
        elites=None,
        margin=MARGIN,
        done_pos_weight=1.0,
    ):
        horizon, candidates, cem_iters = validate.counts(
            horizon=horizon, candidates=candidates, cem_iters=cem_iters
        )
        sigma, tau, margin = validate.non_negatives(sigma=sigma, tau=tau, margin=margin)
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if not done_pos_weight > 0:
            raise ValueError(f"done_pos_weight must be > 0, got {done_pos_weight}")
        self.horizon, self.candidates, self.cem_iters = horizon, candidates, cem_iters
        self.sigma, self.tau, self.gamma = sigma, tau, float(gamma)
        self.elites = max(1, self.candidates // 8) if elites is None else int(elites)
        if not 1 <= self.elites <= self.candidates:
            raise ValueError(f"elites must be in [1, candidates], got {elites}")
        self.margin = margin
        self.done_pos_weight = float(done_pos_weight)

    def to_dict(self):
        """The settings, JSON-ready (08 writes them beside the results)."""
        return dict(vars(self))


def plan(rnn, weights, biases, z, h, c, rngs, settings, rollouts=None):
    """The first actions of the best plans of B agents, planned in M in one batch.

    Args:
        rnn: `MDNRNN` with reward and done heads.
        weights: (1, A, D) float32, biases: (1, A) float32: the linear C (from
            `lib.models.controller.unflatten`), on M's device.
        z: (B, Z) float32 latents of the present frames, on M's device.
        h, c: (B, H) float32 LSTM state before the present step, on M's device.
        rngs: B `numpy.random.Generator`s, one per agent. Each draws, in this
            order: the offsets' standard normals (cem_iters, K - 1, H, A)
            float32, then for tau > 0 M's sampling uniforms and normals (H, Z)
            float32 each.
        settings: `PlanSettings`.
        rollouts: what imagines and scores the B * K candidates (the agents' rows
            repeated K times), with `_rollouts`' arguments and result; default
            `_rollouts`, in M's own dream (`lib.control.pixel_planner` passes the pixel
            dream's).

    Returns:
        (B, A) float32 actions in [-1, 1] on M's device. With K = 1 (or when no
        candidate beats C) they are exactly C's `act_batch(weights, biases, ., z, h)`.
    """
    rollouts = _rollouts if rollouts is None else rollouts
    s = settings
    xp = backend.get_array_module(z)
    device = rnn.device
    b_count, k, horizon = len(z), s.candidates, s.horizon
    a_size = rnn.action_size
    # C's present action, as the linear agent computes it (same batch shape, so the
    # same bits): every candidate's first proposal.
    c_action = act_batch(weights, biases, None, z, h)
    draws = [
        r.standard_normal((s.cem_iters, k - 1, horizon, a_size), dtype=np.float32) for r in rngs
    ]
    eps = (
        np.stack(draws) if draws else np.zeros((0, s.cem_iters, k - 1, horizon, a_size), np.float32)
    )
    noise = None
    if s.tau > 0:
        u = np.stack([r.random((horizon, rnn.z_size), dtype=np.float32) for r in rngs])
        n = np.stack([r.standard_normal((horizon, rnn.z_size), dtype=np.float32) for r in rngs])
        # (H, B * K, Z): one agent's draws repeated over its candidates.
        noise = tuple(np.repeat(x.swapaxes(0, 1), k, axis=1) for x in (u, n))

    tile = (lambda x: xp.repeat(x, k, axis=0)) if k > 1 else (lambda x: x)
    z0, h0, c0, first = tile(z), tile(h), tile(c), tile(c_action)
    mean = np.zeros((b_count, horizon, a_size), np.float32)
    std = np.full((b_count, horizon, a_size), s.sigma, np.float32)
    best_score = None
    best_first = to_host(c_action).astype(np.float32)
    for it in range(s.cem_iters):
        offsets = np.empty((b_count, k, horizon, a_size), np.float32)
        offsets[:, 0] = mean  # plain C (zero offsets) in the first iteration
        offsets[:, 1:] = mean[:, None] + std[:, None] * eps[:, it]
        score, first_actions = rollouts(
            rnn,
            weights,
            biases,
            z0,
            h0,
            c0,
            first,
            device.send(offsets.reshape(b_count * k, horizon, a_size)),
            noise,
            s,
        )
        score = score.reshape(b_count, k)
        first_actions = first_actions.reshape(b_count, k, a_size)
        if it == 0:  # C's own score, raised by the margin a plan must beat
            best_score = score[:, 0] + s.margin
        pick = np.argmax(score, axis=1)  # the first of equals: C's in the first iteration
        top = score[np.arange(b_count), pick]
        better = top > best_score
        best_score = np.where(better, top, best_score)
        best_first[better] = first_actions[better, pick[better]]
        if it + 1 < s.cem_iters:
            elite = np.argsort(-score, axis=1, kind="stable")[:, : s.elites]
            chosen = np.take_along_axis(offsets, elite[:, :, None, None], axis=1)
            mean = chosen.mean(axis=1)
            std = chosen.std(axis=1)
    return device.send(best_first)


def _rollouts(rnn, weights, biases, z, h, c, first, offsets, noise, s, next_z=None):
    """Scores N = B * K imagined rollouts; returns (N,) float64 scores and the
    (N, A) float32 first actions, on the host.

    `first` (N, A) is C's present action, `offsets` (N, H, A) the candidates'
    offsets, `noise` None or (u, normal), each (H, N, Z) host float32. `next_z`, if
    given, makes each next z instead of M: next_z(a) with the actions a (N, A) just
    taken (`lib.control.pixel_planner`'s frames, read by V).
    """
    xp = backend.get_array_module(z)
    n = len(z)
    score = xp.zeros(n, np.float32)
    alive = xp.ones(n, np.float32)
    state = (h, c)
    discount = 1.0
    first_actions = None
    for t in range(s.horizon):
        proposal = first if t == 0 else act_batch(weights, biases, None, z, state[0])
        a = xp.clip(proposal + offsets[:, t], -1.0, 1.0)
        if t == 0:
            first_actions = a
        last = t + 1 == s.horizon
        out = rnn.step(z, a, state, mixture=next_z is None and s.tau > 0 and not last)
        reward, p_continue = reward_and_continue(out, s.done_pos_weight)
        score += np.float32(discount) * alive * reward
        alive *= p_continue
        discount *= s.gamma
        state = out.state
        if not last and next_z is not None:
            z = next_z(a)
        elif not last:
            z = _next_z(rnn, out, z, s.tau, None if noise is None else (noise[0][t], noise[1][t]))
    return to_host(score).astype(np.float64), to_host(first_actions)


def _next_z(rnn, out, z, tau, noise):
    """M's next z for every rollout: the likeliest component's mean (tau = 0) or a
    draw at temperature tau with the given (u, normal) (N, Z) host noise."""
    xp = backend.get_array_module(z)
    kz = rnn.n_mixtures * rnn.z_size
    if tau == 0 and out.mixture is not None:  # an M whose step gives it anyway (MapRNN)
        return sample(out.mixture, 0.0, None)
    if tau == 0:
        # Only the logits and means of the mixture head: two thirds of its product.
        w = rnn.mdn.W.array[: 2 * kz]
        raw = out.h @ w.T
        raw += rnn.mdn.b.array[: 2 * kz]
        raw = raw.reshape(-1, 2, rnn.n_mixtures, rnn.z_size)
        pick = xp.argmax(raw[:, 0], axis=1)[:, None]  # (N, 1, Z)
        mean = xp.take_along_axis(raw[:, 1], pick, axis=1)[:, 0]
        if rnn.residual:
            mean += z
        return mean.astype(np.float32, copy=False)
    logit, mu, log_sigma = out.mixture  # (N, Z, K) each
    u, normal = noise
    if xp is np:
        result = np.empty(mu.shape[:-1], np.float32)
        mdn.sample_kernel(
            *(p.swapaxes(1, 2) for p in (logit, mu, log_sigma)),
            np.float32(1.0 / tau),
            np.float32(np.sqrt(tau)),
            u,
            normal,
            result,
        )
        return result
    # The same draw in array ops (a GPU): the component whose cumulative weight passes u.
    u, normal = xp.asarray(u), xp.asarray(normal)
    scaled = logit / tau
    weight = xp.exp(scaled - scaled.max(axis=-1, keepdims=True))
    cdf = xp.cumsum(weight, axis=-1)
    pick = xp.minimum((cdf <= u[..., None] * cdf[..., -1:]).sum(axis=-1), mu.shape[-1] - 1)[
        ..., None
    ]
    mean = xp.take_along_axis(mu, pick, axis=-1)[..., 0]
    sigma = xp.exp(xp.take_along_axis(log_sigma, pick, axis=-1)[..., 0])
    return (mean + sigma * np.float32(np.sqrt(tau)) * normal).astype(np.float32)


class PlannerAgent(PlanningAgent):
    """The World Models agent with its action planned in M (see the module docstring).

    V's encoding, M's state bookkeeping, `reset` and `act(sim, images)` are
    `WorldModelsAgent`'s; only `choose`, the action, differs: `plan` instead of
    C's product. One C for every episode.

    Args:
        n: lockstep slots.
        vae: `ConvVAE`; rnn: `MDNRNN` with reward and done heads.
        params: (n_params,) or (1, n_params) the linear C's parameters.
        settings: `PlanSettings` (defaults if None).
        temperature: V's, as in `WorldModelsAgent`.
        encoder: as in `WorldModelsAgent`.
    """

    def __init__(self, n, vae, rnn, params, settings=None, temperature=0.0, encoder=None):
        if not rnn.can_dream:
            raise ValueError(
                "planning needs an M with reward and done heads (--mode reward or dream)"
            )
        super().__init__(n, vae, rnn, params, temperature=temperature, encoder=encoder)
        self.settings = settings or PlanSettings()
        self.plan_streams = EpisodeStreams(n, _PLAN_NOISE)

    def reset(self, slots, seeds, episodes=None):
        super().reset(slots, seeds, episodes)
        self.plan_streams.reset(slots, seeds)

    def rollouts(self, live):
        """What scores the candidates of the agents `live` (`plan`'s rollouts): M's own
        dream (`lib.control.pixel_planner` scores them in the pixel dream)."""
        return _rollouts

    def choose(self, z, h, c, live, on_device):
        rngs = self.plan_streams.of(live)
        a = plan(
            self.rnn, self.weights, self.biases, z, h, c, rngs, self.settings, self.rollouts(live)
        )
        # C's own action is returned bit for bit unless a plan replaced it.
        linear = act_batch(self.weights, self.biases, None, z, h)
        self.count((a != linear).any(axis=1))  # a plan beat C's by the margin
        return a
