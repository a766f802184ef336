"""M: the MDN-LSTM of World Models (Ha & Schmidhuber 2018), in Chainer.

An LSTM (hidden 256) reads `[z_t, a_t]` and predicts `z_{t+1}` as a mixture of
5 Gaussians per latent dimension, plus optionally the reward of the step (MSE
head) and whether the episode ends (a logit for sigmoid cross-entropy).

The mixture head is one linear layer whose output, per step, is laid out as
`(3, K, Z)`: the mixture logits of the K components, then their means, then
their log standard deviations, each a (K, Z) block with the latent dimension
innermost (so the fused NLL kernel vectorises over it). `split_mixture` gives
the user-facing (..., Z, K) views. Log-sigma is clamped to
`[log_sigma_min, log_sigma_max]` wherever it is used, so the NLL stays finite
however small the network pushes sigma.

On the CPU, training runs the LSTM over the whole sequence as one node
(`lib.kernels.fast_lstm`) and the NLL as one fused numba kernel (`lib.kernels.mdn`) that computes the
gradient during the forward pass; on a GPU both fall back to plain Chainer
functions. `chainer.config.fast_lstm = False` forces the plain path on the CPU
too (for comparison). Inference (`step`) is plain NumPy on the CPU: no graph.

Typical use::

    m = MDNRNN()                                # or MDNRNN(**json.load(sidecar))
    loss_fn = MDNRNNLoss(m)
    loss, state = loss_fn(z, a, z_next, mask)   # (B, T, ...) batches
    out = m.step(z_t, a_t, state)               # one step for B agents
    z_next = sample(out.mixture, tau=1.15, rng=rng)
    z_in = m.scheduled_inputs(z, a, prob, tau, rng)  # dream mode: own samples as inputs
"""

import math
from typing import NamedTuple

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
from chainer import backend, initializers

from lib import validate
from lib.env import socnavenv as sn
from lib.kernels import fast_lstm, mdn, runtime
from lib.models.task_head import task_loss

# The outcome head's classes (beyond the paper): how a step ends, as `socnavenv`'s
# codes 0-3. A timeout is the task's rule (a step count), not something M sees, so
# its step is "running" to M; the dream adds the timeout reward by rule.
OUTCOME_CLASSES = ("running", "success", "collision", "out_of_map")
# The reward each ending pays (the running class's reward is the shaping head's).
OUTCOME_REWARDS = np.array(
    [0.0, sn.REACH_REWARD, sn.COLLISION_REWARD, sn.OUTOFMAP_REWARD], np.float32
)

# Far beyond any sane z-score, but finite in float32, as the kernel's clamp of its square.
_MAX_Z = math.sqrt(mdn.MAX_SQUARED_Z)


class MixtureParams(NamedTuple):
    """Mixture of Gaussians per latent dimension, each field (..., Z, K).

    Attributes:
        logit: unnormalised log mixture weights.
        mu: component means.
        log_sigma: component log standard deviations, already clamped.
    """

    logit: object
    mu: object
    log_sigma: object


class StepOutput(NamedTuple):
    """What `MDNRNN.step` returns.

    Attributes:
        h: (B, H) float32 hidden state after the step (the controller's input).
        state: (h, c), two (B, H) float32 arrays to pass to the next step.
        mixture: `MixtureParams` of z_{t+1}, fields (B, Z, K) float32.
        reward: (B,) float32 predicted reward, or None without a reward head.
            With the outcome head: the expected reward over the endings.
        done_logit: (B,) float32 logit of done, or None without a done head.
            With the outcome head: the calibrated log-odds of "not running".
        outcome: (B, 4) float32 calibrated probabilities of `OUTCOME_CLASSES`
            (outcome head only, else None).
    """

    h: object
    state: tuple
    mixture: MixtureParams
    reward: object
    done_logit: object
    outcome: object = None


class SequenceOutput(NamedTuple):
    """What `MDNRNN.forward` returns (Variables).

    Attributes:
        h: (B, T, H) hidden states.
        mixture: (B, T, 3 * K * Z) raw mixture head, layout `(3, K, Z)` per step.
        reward: (B, T) predicted rewards, or None (expected rewards with the
            outcome head; no graph).
        done_logit: (B, T) done logits, or None (calibrated with the outcome
            head; no graph).
        state: (h, c) final state, two (B, H) Variables.
        outcome_logit: (B, T, 4) raw outcome logits (outcome head only).
        shaping: (B, T) raw shaping-reward head (outcome head only).
        cells: (B, T, H) the cell state after every step, an array with no graph
            (the map M only: 04's rollout loss starts from it), or None.
    """

    h: object
    mixture: object
    reward: object
    done_logit: object
    state: tuple
    outcome_logit: object = None
    shaping: object = None
    cells: object = None


def split_mixture(raw, z_size, n_mixtures, log_sigma_min, log_sigma_max):
    """Splits a raw mixture head into its parameters, clamping log-sigma.

    Works on NumPy/CuPy arrays (no graph, views) and on Variables.

    Args:
        raw: (..., 3 * K * Z) float, layout `(3, K, Z)` in the last axis.
        z_size, n_mixtures: Z and K.
        log_sigma_min, log_sigma_max: float, the clamp of log-sigma.

    Returns:
        `MixtureParams`, each (..., Z, K).
    """
    lead = raw.shape[:-1]
    shape = lead + (3, n_mixtures, z_size)
    if isinstance(raw, chainer.Variable):
        r = F.swapaxes(F.reshape(raw, shape), -1, -2)  # (..., 3, Z, K)
        logit, mu, log_sigma = (F.squeeze(p, -3) for p in F.split_axis(r, 3, axis=-3))
        return MixtureParams(logit, mu, F.clip(log_sigma, log_sigma_min, log_sigma_max))
    r = raw.reshape(shape).swapaxes(-1, -2)
    xp = backend.get_array_module(raw)
    log_sigma = xp.clip(r[..., 2, :, :], log_sigma_min, log_sigma_max)
    return MixtureParams(r[..., 0, :, :], r[..., 1, :, :], log_sigma)


def mixture_log_prob(params, target):
    """Log density of `target` under a per-dimension mixture, in Chainer functions.

    The plain (GPU and reference) form of the NLL, via log-sum-exp.

    Args:
        params: `MixtureParams` of Variables or arrays, each (N, Z, K).
        target: (N, Z) float.

    Returns:
        (N, Z) Variable, `log p(target[n, d])`.
    """
    logit, mu, log_sigma = params
    log_pi = F.log_softmax(logit, axis=2)
    t = F.broadcast_to(F.expand_dims(target, 2), mu.shape)
    score = F.clip((t - mu) * F.exp(-log_sigma), -_MAX_Z, _MAX_Z)
    score2 = score * score
    log_normal = -0.5 * score2 - log_sigma - mdn.HALF_LOG_2PI
    return F.logsumexp(log_pi + log_normal, axis=2)


def mdn_nll(raw, target, mask, z_size, n_mixtures, log_sigma_min, log_sigma_max):
    """Masked mean negative log-likelihood of targets under a mixture head.

    `sum(mask[n] * -log p(target[n, d])) / (sum(mask) * Z)`: the mean NLL per
    latent dimension over the steps that count (0 when none does).

    Args:
        raw: (N, 3 * K * Z) float32 Variable, the raw head (layout `(3, K, Z)`).
        target: (N, Z) float32 array.
        mask: (N,) float32 array of step weights, 0 or 1.
        z_size, n_mixtures: Z and K.
        log_sigma_min, log_sigma_max: float, the log-sigma clamp.

    Returns:
        Scalar float32 Variable.
    """
    if isinstance(target, chainer.Variable):
        target = target.array
    if _use_fast(raw):
        return mdn.MDNNLL(n_mixtures, log_sigma_min, log_sigma_max).apply((raw, target, mask))[0]
    params = split_mixture(raw, z_size, n_mixtures, log_sigma_min, log_sigma_max)
    log_p = mixture_log_prob(params, target)
    xp = backend.get_array_module(mask)
    norm = max(float(mask.sum()) * z_size, 1.0)
    return -F.sum(log_p * xp.broadcast_to(mask[:, None], log_p.shape)) / norm


def _use_fast(x):
    """Whether the CPU fast path applies (NumPy data, not disabled by config)."""
    array = x.array if isinstance(x, chainer.Variable) else x
    return isinstance(array, np.ndarray) and getattr(chainer.config, "fast_lstm", True)


def mask_through_done(done):
    """Step mask that keeps every step up to and including the first `done`.

    The step that ends the episode still has a real next frame (and is where
    the done head must fire); the steps after it are padding.

    Args:
        done: (B, T) bool.

    Returns:
        (B, T) float32, 1 for steps that count, 0 after the first done.
    """
    done = np.asarray(done, bool)
    ended_before = np.cumsum(done, axis=1) - done
    return (ended_before == 0).astype(np.float32)


def checked_heads(shaping_bound, outcome_weights):
    """The reward and ending heads' settings, checked (`MDNRNN`, `MapRNN`): the shaping
    reward's bound (> 0) and the outcome loss's class weights (4 positive numbers; None:
    all 1). Returns (bound, weights as a list of floats).

    Raises:
        ValueError: either is out of range.
    """
    if not shaping_bound > 0:
        raise ValueError(f"shaping_bound must be > 0, got {shaping_bound}")
    weights = np.ones(len(OUTCOME_CLASSES)) if outcome_weights is None else outcome_weights
    weights = np.asarray(weights, np.float64)
    if weights.shape != (len(OUTCOME_CLASSES),) or not (weights > 0).all():
        raise ValueError(f"outcome_weights must be 4 positive numbers, got {outcome_weights}")
    return float(shaping_bound), [float(w) for w in weights]


def step_inputs(model, z, a, state):
    """(z, a, h, c) for one step of `model` (MDNRNN or MapRNN): z and a as float32 arrays
    on its device, and the state's arrays (`model.initial_state` when `state` is None)."""
    xp = model.xp
    if xp is np:
        runtime.follow_load()  # a safe point: NumPy's BLAS takes the current thread count
    z = xp.asarray(z, np.float32)
    a = xp.asarray(a, np.float32)
    if state is None:
        state = model.initial_state(z.shape[0])
    h, c = (s.array if isinstance(s, chainer.Variable) else s for s in state)
    return z, a, h, c


class MDNRNN(chainer.Chain):
    """MDN-LSTM: `[z_t, a_t]` -> LSTM -> mixture over `z_{t+1}` (and heads).

    LSTM gates use `lib.kernels.fast_lstm`'s blocked layout. Weights start uniform in
    `+-1 / sqrt(hidden)` (PyTorch's LSTM default), with the forget-gate bias at
    1 so early training keeps its memory.

    Args:
        z_size: int, latent size Z (32).
        action_size: int, action size A (2).
        hidden_size: int, LSTM units H (256).
        n_mixtures: int, Gaussians per latent dimension K (5).
        reward_head: bool, also predict the step's reward.
        done_head: bool, also predict the logit of done.
        log_sigma_min, log_sigma_max: float, clamp of the predicted log-sigma.
        residual: bool, component means are offsets added to the current z
            (not in the paper; see `04_train_rnn.py --residual`).
        outcome_head: bool, instead of the reward and done heads, predict how
            the step ends (`OUTCOME_CLASSES`, softmax) and the running step's
            reward from a head bounded to [-shaping_bound, 0] (not in the
            paper; see `04_train_rnn.py --outcome-head`). The reward is then
            the expected one and done the probability of an ending: no
            prediction can pay more than the task does.
        shaping_bound: float > 0, the largest running-step penalty.
        outcome_weights: 4 floats, the class weights the outcome loss used;
            their logs are subtracted from the logits so the probabilities
            are calibrated (see `calibrated_done_logit`). Ones when None.
        task_size: int; > 0 adds a linear task head from [z_t, h_t], the linear C's
            input, to a teacher's action (`task_prediction`, `lib.models.task_head`;
            04 `--task-weight`, not in the paper). 0 (default): none.

    Raises:
        ValueError: sizes that are not positive, or an empty log-sigma range.
    """

    def __init__(
        self,
        z_size=32,
        action_size=2,
        hidden_size=256,
        n_mixtures=5,
        reward_head=False,
        done_head=False,
        log_sigma_min=-7.0,
        log_sigma_max=4.0,
        residual=False,
        outcome_head=False,
        shaping_bound=0.02,
        outcome_weights=None,
        task_size=0,
    ):
        super().__init__()
        # Residual M (beyond the paper): the mixture means are offsets from the
        # current z, so "nothing moves" is the network's starting guess and
        # capacity goes to what changes. Consecutive frames differ little, and
        # a plain M needs many epochs just to learn to copy z.
        self.residual = bool(residual)
        self.z_size, self.action_size, self.hidden_size, self.n_mixtures = validate.counts(
            z_size=z_size, action_size=action_size, hidden_size=hidden_size, n_mixtures=n_mixtures
        )
        if not log_sigma_min < log_sigma_max:
            raise ValueError(f"empty log-sigma range [{log_sigma_min}, {log_sigma_max}]")
        self.reward_head = bool(reward_head)
        self.done_head = bool(done_head)
        self.log_sigma_min = float(log_sigma_min)
        self.log_sigma_max = float(log_sigma_max)
        self.outcome_head = bool(outcome_head)
        if self.outcome_head and (self.reward_head or self.done_head):
            raise ValueError("the outcome head replaces the reward and done heads: not both")
        self.shaping_bound, self.outcome_weights = checked_heads(shaping_bound, outcome_weights)
        if int(task_size) < 0:
            raise ValueError(f"task_size must be >= 0, got {task_size}")
        self.task_size = int(task_size)
        hidden = self.hidden_size
        bias = np.zeros(4 * hidden, np.float32)
        bias[2 * hidden : 3 * hidden] = 1.0  # forget gate (blocks a, i, f, o)
        uniform = initializers.Uniform(1.0 / math.sqrt(hidden))
        with self.init_scope():
            self.w_x = chainer.Parameter(uniform, (4 * hidden, self.z_size + self.action_size))
            self.w_h = chainer.Parameter(uniform, (4 * hidden, hidden))
            self.b = chainer.Parameter(bias)
            self.mdn = L.Linear(hidden, 3 * self.n_mixtures * self.z_size)
            if self.reward_head:
                self.reward = L.Linear(hidden, 1)
            if self.done_head:
                self.done = L.Linear(hidden, 1)
            if self.outcome_head:
                self.outcome = L.Linear(hidden, len(OUTCOME_CLASSES))
                self.shaping = L.Linear(hidden, 1)
            if self.task_size:
                self.task = L.Linear(self.z_size + hidden, self.task_size)

    @property
    def can_dream(self):
        """Whether M predicts rewards and episode ends (what a dream needs)."""
        return self.outcome_head or (self.reward_head and self.done_head)

    def config(self):
        """The constructor's arguments, JSON-ready: `MDNRNN(**m.config())` rebuilds it."""
        return {
            "z_size": self.z_size,
            "action_size": self.action_size,
            "hidden_size": self.hidden_size,
            "n_mixtures": self.n_mixtures,
            "reward_head": self.reward_head,
            "done_head": self.done_head,
            "residual": self.residual,
            "log_sigma_min": self.log_sigma_min,
            "log_sigma_max": self.log_sigma_max,
            "outcome_head": self.outcome_head,
            "shaping_bound": self.shaping_bound,
            "outcome_weights": self.outcome_weights,
        } | ({"task_size": self.task_size} if self.task_size else {})

    def initial_state(self, batch):
        """Zero LSTM state for `batch` agents: (h, c), two (B, H) float32 arrays."""
        xp = self.xp
        shape = (batch, self.hidden_size)
        return xp.zeros(shape, np.float32), xp.zeros(shape, np.float32)

    def forward(self, z, a, state=None):
        """Teacher-forced pass over whole sequences (the training graph).

        Args:
            z: (B, T, Z) float32 latents.
            a: (B, T, A) float32 actions.
            state: (h, c), two (B, H) arrays or Variables; zeros when None.
                Pass the previous chunk's final state (unchained) for truncated
                BPTT.

        Returns:
            `SequenceOutput` of Variables.
        """
        z, a = (
            self.xp.asarray(v.array if isinstance(v, chainer.Variable) else v) for v in (z, a)
        )  # either may come from the host (04's actions, scheduled_inputs' a)
        batch, steps, _ = z.shape
        x = self.xp.concatenate([z, a], axis=2).astype(np.float32, copy=False)
        h0, c0 = (None, None) if state is None else state
        if _use_fast(x):
            hs, h, c = fast_lstm.fast_lstm(x, self.w_x, self.w_h, self.b, h0, c0)
        else:
            if h0 is None:
                h0, c0 = self.initial_state(batch)
            hs, h, c = fast_lstm.lstm_loop(x, self.w_x, self.w_h, self.b, h0, c0)
        flat = F.reshape(hs, (batch * steps, self.hidden_size))
        mixture = F.reshape(self.mdn(flat), (batch, steps, -1))
        if self.residual:
            offset = self.xp.zeros((batch, steps, 3, self.n_mixtures, self.z_size), np.float32)
            offset[:, :, 1] = z[:, :, None, :]
            mixture = mixture + offset.reshape(batch, steps, -1)
        reward = done = None
        if self.reward_head:
            reward = F.reshape(self.reward(flat), (batch, steps))
        if self.done_head:
            done = F.reshape(self.done(flat), (batch, steps))
        if self.outcome_head:
            logit = F.reshape(self.outcome(flat), (batch, steps, len(OUTCOME_CLASSES)))
            shaping = F.reshape(self.shaping(flat), (batch, steps))
            reward, done, _ = self.outcome_values(logit.array, shaping.array)
            reward, done = chainer.Variable(reward), chainer.Variable(done)
            return SequenceOutput(hs, mixture, reward, done, (h, c), logit, shaping)
        return SequenceOutput(hs, mixture, reward, done, (h, c))

    def task_prediction(self, z, hs, h0=None):
        """The task head's prediction at every step from [z_t, h_t], the features the
        linear C reads: h_t is the state *before* z_t (`hs[:, t-1]`, `h0` at t = 0).

        Args:
            z: (B, T, Z) the steps' latents (the real ones, not scheduled samples).
            hs: (B, T, H) Variable, `forward`'s states after each step.
            h0: (B, H) the state the sequence started from; zeros when None.

        Returns:
            (B * T, task_size) Variable.
        """
        batch, steps = z.shape[:2]
        h0 = self.initial_state(batch)[0] if h0 is None else h0
        h0 = h0.array if isinstance(h0, chainer.Variable) else h0
        before = F.concat([F.reshape(h0, (batch, 1, -1)), hs[:, : steps - 1]], axis=1)
        x = F.concat([self.xp.asarray(z, np.float32), before], axis=2)
        return self.task(F.reshape(x, (batch * steps, -1)))

    def outcome_values(self, logit, shaping):
        """The outcome head's raw outputs as (expected reward, done log-odds, class
        probabilities), arrays of any leading shape; logits are calibrated first.

        Args:
            logit: (..., 4) raw outcome logits.
            shaping: (...) raw shaping head.

        Returns:
            (reward (...), done_logit (...), probabilities (..., 4)), float32.
        """
        xp = backend.get_array_module(logit)
        logit = logit - xp.asarray(np.log(self.outcome_weights), np.float32)
        top = logit.max(axis=-1, keepdims=True)
        e = xp.exp(logit - top)
        total = e.sum(axis=-1, keepdims=True)
        p = e / total
        running_reward = -self.shaping_bound / (1.0 + xp.exp(-shaping))
        reward = p[..., 0] * running_reward + p[..., 1:] @ xp.asarray(OUTCOME_REWARDS[1:])
        # log P(ending) - log P(running), a log-sum-exp over the endings.
        ends = logit[..., 1:]
        ends_top = ends.max(axis=-1)
        ends_sum = xp.exp(ends - ends_top[..., None]).sum(axis=-1)
        done_logit = ends_top + xp.log(ends_sum) - logit[..., 0]
        f32 = np.float32
        return reward.astype(f32), done_logit.astype(f32), p.astype(f32)

    def split(self, raw):
        """`split_mixture` with this model's sizes and clamp; see there."""
        return split_mixture(
            raw, self.z_size, self.n_mixtures, self.log_sigma_min, self.log_sigma_max
        )

    def step(self, z, a, state=None, mixture=True):
        """One step for a batch of agents, without a graph (inference).

        Args:
            z: (B, Z) float32 latents at t.
            a: (B, A) float32 actions at t.
            state: (h, c) from the previous step, two (B, H) float32 arrays;
                zeros when None.
            mixture: False skips the mixture head (its `mixture` is then None):
                an agent acting in the real environment only needs h.

        Returns:
            `StepOutput` of arrays (NumPy on the CPU, CuPy on a GPU).
        """
        xp = self.xp
        z, a, h, c = step_inputs(self, z, a, state)
        x = xp.concatenate([z, a], axis=1)
        w_x, w_h, b = self.w_x.array, self.w_h.array, self.b.array
        if xp is np:
            h, c = fast_lstm.lstm_step_numpy(x, h, c, w_x, w_h, b)
        else:
            with chainer.no_backprop_mode():
                _, hv, cv = fast_lstm.lstm_loop(x[:, None], w_x, w_h, b, h, c)
            h, c = hv.array, cv.array
        params = None
        if mixture:
            raw = h @ self.mdn.W.array.T
            raw += self.mdn.b.array
            if self.residual:
                raw.reshape(-1, 3, self.n_mixtures, self.z_size)[:, 1] += z[:, None, :]
            params = self.split(raw)
        return StepOutput(h, (h, c), params, *self.heads(h))

    def heads(self, h):
        """The heads' readout of (B, H) states, no graph: (reward, done_logit, outcome),
        each None without its head (see `StepOutput`)."""
        reward = done = outcome = None
        if self.reward_head:
            reward = h @ self.reward.W.array[0] + self.reward.b.array[0]
        if self.done_head:
            done = h @ self.done.W.array[0] + self.done.b.array[0]
        if self.outcome_head:
            logit = self._outcome_logits(h)
            shaping = h @ self.shaping.W.array[0] + self.shaping.b.array[0]
            reward, done, outcome = self.outcome_values(logit, shaping)
        return reward, done, outcome

    def _outcome_logits(self, h):
        """The outcome head's (B, 4) logits of (B, H) states, no graph."""
        return h @ self.outcome.W.array.T + self.outcome.b.array

    def sample(self, params, tau, rng):
        """`sample` as a method, for symmetry with `step`."""
        return sample(params, tau, rng)

    def scheduled_inputs(self, z, a, prob, tau, rng, state=None):
        """Latent inputs for scheduled sampling (the `dream` mode of training).

        Each input `z_t` (t >= 1) is replaced, with probability `prob` and
        independently per sequence and step, by a sample of M's own prediction
        of it. The predictions come from one teacher-forced pass without a
        graph, so training stays one whole-sequence pass (the parallel
        approximation of scheduled sampling: a replaced input was predicted
        from real, not from earlier replaced, inputs).

        Args:
            z: (B, T, Z) float32 real latents.
            a: (B, T, A) float32 actions.
            prob: float in [0, 1], the replacement probability.
            tau: float, sampling temperature.
            rng: `numpy.random.Generator`.
            state: initial (h, c) as in `forward`.

        Returns:
            (B, T, Z) float32 array on the model's device: the inputs to train on
            (targets stay real).

        Randomness, in this order from `rng`: M's samples at all T steps (the last
        is not used), then a (B, T) uniform that picks the replaced steps.
        """
        z = self.xp.asarray(z, np.float32)
        if prob <= 0:
            return z
        with chainer.no_backprop_mode(), chainer.using_config("train", False):
            out = self.forward(z, a, state)
        predicted = sample(self.split(out.mixture.array), tau, rng)[:, :-1]
        replace = self.xp.asarray(rng.random(z.shape[:2]) < prob)[:, 1:, None]
        mixed = z.copy()
        mixed[:, 1:] = self.xp.where(replace, predicted, z[:, 1:])
        return mixed

    def open_loop_inputs(self, z, a, prob, block, tau, rng, state=None):
        """Latent inputs for scheduled sampling in open-loop runs (04 --open-loop).

        `scheduled_inputs` replaces single inputs by one-step predictions, so M never
        sees its own errors compound. Here each sequence is cut into periods of
        `block` + 1 steps (at a random phase per sequence): a period starts with a
        real input and, with probability `prob`, its other `block` inputs are dreamt,
        each M's own prediction from the input before it, as in the dream (`block`
        predictions in a row at most). The state runs over those inputs as the
        dream's would. Step 0 stays real. The predictions come from stepping M
        without a graph, so training is still one whole-sequence pass over the
        returned inputs, whose states are the rollout's. The targets stay real: M
        learns to come back from its own drift (the "data as demonstrator" view of
        multi-step prediction, Venkatraman et al. 2015).

        Args:
            z, a, prob, tau, rng, state: as `scheduled_inputs`.
            block: int >= 1, the longest run of chained predictions.

        Returns:
            (B, T, Z) float32 array on the model's device.

        Randomness, in this order from `rng`: the (B,) phases in [0, block], the
        (B, T // (block + 1) + 2) uniforms that pick the dreamt periods, then M's
        samples step by step (none at tau 0).
        """
        xp = self.xp
        z = xp.asarray(z, np.float32)
        if prob <= 0:
            return z
        if int(block) < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        period = int(block) + 1
        batch, steps = z.shape[:2]
        phase = rng.integers(0, period, size=batch)
        pick = rng.random((batch, steps // period + 2)) < prob
        at = np.arange(steps)[None, :] + phase[:, None]
        dreamt = np.take_along_axis(pick, at // period, axis=1) & (at % period != 0)
        dreamt[:, 0] = False
        if not dreamt.any():
            return z
        last = int(np.nonzero(dreamt.any(axis=0))[0].max())  # no step after it matters
        a = xp.asarray(a, np.float32)
        mixed = z.copy()
        dreamt_dev = xp.asarray(dreamt)
        with chainer.no_backprop_mode(), chainer.using_config("train", False):
            for t in range(last):
                out = self.step(mixed[:, t], a[:, t], state)
                state = out.state
                if dreamt[:, t + 1].any():
                    predicted = self.sample(out.mixture, tau, rng)
                    mixed[:, t + 1] = xp.where(dreamt_dev[:, t + 1, None], predicted, z[:, t + 1])
        return mixed


# How 04 trains M (see 04's --help); each mode's M is saved as models/rnn_<mode>.npz.
MODES = ("normal", "window", "reward", "dream")

# An episode of M's ends where its calibrated done probability exceeds this.
DONE_THRESHOLD = 0.5


def calibrated_done_logit(logit, done_pos_weight):
    """M's done logit with the training-time class weight taken out.

    A sigmoid cross-entropy whose positives weigh w is minimised by
    logit = log(w p / (1 - p)), so log(w) is subtracted to recover log-odds.
    """
    return logit - np.log(done_pos_weight)


def done_logit_threshold(done_pos_weight=1.0, threshold=DONE_THRESHOLD):
    """The done head's raw logit above which an episode ends.

    The log-odds of `threshold`, plus log(w) for a head trained with positive
    weight w (see `calibrated_done_logit`); 0 for w = 1 and the default threshold.
    """
    return np.log(threshold / (1.0 - threshold)) + np.log(done_pos_weight)


def reward_and_continue(out, done_pos_weight=1.0):
    """M's one-step prediction as (expected reward, probability the episode goes on).

    What a planner or a soft dream needs from a step, whatever M's heads: the
    reward head's value and one minus the calibrated done probability (see
    `calibrated_done_logit`).

    Args:
        out: `StepOutput` of an M with reward and done heads.
        done_pos_weight: the done head's training-time positive weight.

    Returns:
        (reward, p_continue): two (B,) float32 arrays on M's device.
    """
    xp = backend.get_array_module(out.reward)
    logit = calibrated_done_logit(out.done_logit, done_pos_weight)
    p_continue = 1.0 / (1.0 + xp.exp(logit))
    return out.reward.astype(np.float32), p_continue.astype(np.float32)


def sample(params, tau, rng):
    """Draws z from per-dimension mixtures at temperature `tau`, all agents at once.

    Temperature divides the mixture logits and scales sigma by `sqrt(tau)`.
    `tau = 0` is the limit: the mean of the most likely component.

    Args:
        params: `MixtureParams`, fields (B, Z, K) arrays (NumPy or CuPy).
        tau: float >= 0.
        rng: `numpy.random.Generator`, the only source of randomness (drawn on
            the host, so results do not depend on the device).

    Returns:
        (B, Z) float32 array on the device of `params`.

    Raises:
        ValueError: negative `tau`.
    """
    if tau < 0:
        raise ValueError(f"temperature must be >= 0, got {tau}")
    logit, mu, log_sigma = params
    xp = backend.get_array_module(mu)
    lead = mu.shape[:-1]
    if tau == 0:
        pick = xp.argmax(logit, axis=-1)[..., None]
        return xp.take_along_axis(mu, pick, axis=-1)[..., 0].astype(np.float32)
    # Draw on the host in a fixed order (uniform then normal), whatever the path.
    u = rng.random(lead, dtype=np.float32)
    noise = rng.standard_normal(lead, dtype=np.float32)
    if xp is np:
        # One kernel call instead of ~15 NumPy calls: ~10x faster for one
        # agent, several times for a thousand.
        z_size, k = mu.shape[-2:]
        out = np.empty(lead, np.float32)
        mdn.sample_kernel(
            *(p.reshape(-1, z_size, k).swapaxes(1, 2) for p in (logit, mu, log_sigma)),
            np.float32(1.0 / tau),  # float32 scalars keep the kernel in float32
            np.float32(math.sqrt(tau)),
            u.reshape(-1, z_size),
            noise.reshape(-1, z_size),
            out.reshape(-1, z_size),
        )
        return out
    return _sample_xp(logit, mu, log_sigma, tau, xp.asarray(u), xp.asarray(noise))


def _sample_xp(logit, mu, log_sigma, tau, u, noise):
    """`sample` in array ops (the CuPy path); u, noise (...) float32 draws."""
    xp = backend.get_array_module(mu)
    scaled = logit / tau
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    cdf = xp.cumsum(xp.exp(scaled), axis=-1)
    # First component whose cumulative weight exceeds u * total; the min()
    # guards the u * total == total edge of float rounding.
    pick = xp.minimum((cdf <= u[..., None] * cdf[..., -1:]).sum(axis=-1), mu.shape[-1] - 1)
    pick = pick[..., None]
    mean = xp.take_along_axis(mu, pick, axis=-1)[..., 0]
    sigma = xp.exp(xp.take_along_axis(log_sigma, pick, axis=-1)[..., 0])
    return (mean + sigma * math.sqrt(tau) * noise).astype(np.float32)


class MDNRNNLoss(chainer.Chain):
    """Training loss of `MDNRNN`: mixture NLL plus the optional heads' losses.

    `loss = nll + reward_weight * reward_loss + done_weight * done_loss`, each a
    mean over the steps whose mask is 1 (NLL also over latent dimensions).
    The reward loss is the squared error; the done loss is sigmoid
    cross-entropy with positive steps weighted by `done_pos_weight` (dones are
    rare: about one step in a hundred).

    With the outcome head, `done_loss` is the cross-entropy of the step's
    ending (`OUTCOME_CLASSES`), each class weighted by the model's
    `outcome_weights`, and `reward_loss` the squared error of the running steps'
    reward as a fraction of `shaping_bound` (timeout steps count as running
    for the ending and are left out of the reward: their reward is the rule's).

    Reports, through `chainer.reporter`: `loss`, `nll`, and `reward_loss` /
    `done_loss` when the model has those heads.

    Args:
        model: an `MDNRNN`.
        reward_weight: float, weight of the reward loss.
        done_weight: float, weight of the done loss.
        done_pos_weight: float, weight of the positive class in the done loss.
        task_weight: float; > 0 adds this times the task head's squared error per
            step (`lib.models.task_head.task_loss`), reported as `task_loss`. 0: none.
    """

    def __init__(
        self, model, reward_weight=1.0, done_weight=1.0, done_pos_weight=1.0, task_weight=0.0
    ):
        super().__init__()
        self.task_weight = float(task_weight)
        if self.task_weight < 0:
            raise ValueError(f"task_weight must be >= 0, got {task_weight}")
        if self.task_weight and not model.task_size:
            raise ValueError("a task weight needs an M with a task head (MDNRNN(task_size=A))")
        self.reward_weight = float(reward_weight)
        self.done_weight = float(done_weight)
        self.done_pos_weight = float(done_pos_weight)
        self.last_output = None  # the last forward's SequenceOutput
        with self.init_scope():
            self.model = model

    def forward(
        self, z, a, z_next, mask=None, reward=None, done=None, state=None, outcome=None,
        teacher=None, z_task=None,
    ):  # fmt: skip
        """Loss of a batch of sequences.

        Args:
            z: (B, T, Z) float32 inputs z_t.
            a: (B, T, A) float32 actions a_t.
            z_next: (B, T, Z) float32 targets z_{t+1}.
            mask: (B, T) float32 or bool, 1 where the step counts (see
                `mask_through_done`); all steps when None.
            reward: (B, T) float32 rewards; required with a reward head.
            done: (B, T) bool or float dones; required with a done head.
            state: (h, c) initial LSTM state (see `MDNRNN.forward`).
            outcome: (B, T) int `socnavenv` outcome codes of the steps;
                required with the outcome head (with `reward`).
            teacher: (B, T, A) the teacher's actions at the steps' frames; required
                with a task weight.
            z_task: (B, T, Z) the latents the task head reads (the real ones when
                `z` holds scheduled samples); `z` when None.

        Returns:
            (loss, state): scalar float32 Variable and the final (h, c).

        Raises:
            ValueError: a head's target is missing.
        """
        m = self.model
        xp = m.xp
        batch, steps = z.shape[:2]
        if mask is None:
            mask = xp.ones((batch, steps), np.float32)
        mask = xp.asarray(mask, np.float32).reshape(batch * steps)
        n = max(float(mask.sum()), 1.0)
        out = m(z, a, state)
        self.last_output = out  # for losses that build on this pass (04's rollout loss)
        raw = F.reshape(out.mixture, (batch * steps, -1))
        target = xp.asarray(z_next, np.float32).reshape(batch * steps, m.z_size)
        nll = mdn_nll(raw, target, mask, m.z_size, m.n_mixtures, m.log_sigma_min, m.log_sigma_max)
        loss = nll
        report = {"nll": nll}
        if m.reward_head:
            if reward is None:
                raise ValueError("the model has a reward head: pass reward")
            r = xp.asarray(reward, np.float32).reshape(batch * steps)
            err = F.reshape(out.reward, (batch * steps,)) - r
            reward_loss = F.sum(err * err * mask) / n
            loss = loss + self.reward_weight * reward_loss
            report["reward_loss"] = reward_loss
        if m.done_head:
            if done is None:
                raise ValueError("the model has a done head: pass done")
            y = xp.asarray(done, np.float32).reshape(batch * steps)
            logit = F.reshape(out.done_logit, (batch * steps,))
            # -[w y log s(x) + (1 - y) log(1 - s(x))] = w y softplus(-x) + (1 - y) softplus(x)
            per_step = self.done_pos_weight * y * F.softplus(-logit) + (1 - y) * F.softplus(logit)
            done_loss = F.sum(per_step * mask) / n
            loss = loss + self.done_weight * done_loss
            report["done_loss"] = done_loss
        if m.outcome_head:
            if reward is None or outcome is None:
                raise ValueError("the model has an outcome head: pass reward and outcome")
            codes = xp.asarray(outcome).reshape(batch * steps).astype(np.int32)
            classes = xp.where(codes == sn.TIMEOUT, sn.RUNNING, codes).astype(np.int32)
            logit = F.reshape(out.outcome_logit, (batch * steps, len(OUTCOME_CLASSES)))
            weight = xp.asarray(m.outcome_weights, np.float32)[classes]
            ce = F.softmax_cross_entropy(logit, classes, reduce="no")
            done_loss = F.sum(ce * weight * mask) / n
            running = mask * (codes == sn.RUNNING)
            target = xp.clip(-xp.asarray(reward, np.float32).reshape(-1) / m.shaping_bound, 0, 1)
            err = F.sigmoid(F.reshape(out.shaping, (batch * steps,))) - target
            reward_loss = F.sum(err * err * running) / max(float(running.sum()), 1.0)
            loss = loss + self.done_weight * done_loss + self.reward_weight * reward_loss
            report.update(done_loss=done_loss, reward_loss=reward_loss)
        if self.task_weight:
            if teacher is None:
                raise ValueError("a task weight needs the steps' teacher labels: pass teacher")
            h0 = None if state is None else state[0]
            pred = m.task_prediction(z if z_task is None else z_task, out.h, h0)
            labels = xp.asarray(teacher, np.float32).reshape(batch * steps, -1)
            report["task_loss"] = task_loss(pred, labels, mask)
            loss = loss + self.task_weight * report["task_loss"]
        report["loss"] = loss
        chainer.reporter.report(report, self)
        return loss, out.state
