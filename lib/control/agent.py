"""The World Models agent (V + M + C), batched: many agents in lockstep.

`WorldModelsAgent` is a policy for `lib.env.rollouts.run_episodes` in the real
environment: at each step one V encode of all N frames, one batched controller
product, one M step. Agent i plays with candidate `candidate_of(episode)`, so
CMA-ES can evaluate many (candidate, trial) pairs in one batch.

`ExploringAgent` is one C with Gaussian noise on its actions, whose episodes the
paper's iterative procedure feeds back into M (02 --agent, built in its workers by
`exploring_agent`).

`dream_rollouts` plays candidates inside M instead (no V, no environment): z
comes from M's own samples at temperature tau, rewards and episode ends from
M's reward and done heads.

Order within a step, as in the paper: the controller sees [z_t, h_t] and acts;
then M reads [z_t, a_t] and its hidden state becomes h_{t+1}.

On a GPU (V and M on a CuPy device) the agent's state, V's encoder, C's product
and M's step stay on the device. A real-env step crosses to the device once (the
frames, with any sampling noise) and back once (the actions the environment needs);
a dream step sends its sampling noise in and brings back reward and done.

Only agents whose episode is still running are computed. Fitness groups are
fixed sets of (candidate, trial) episodes, so the sequence of batch shapes a
group sees depends only on its own episodes, and results never depend on the
number of workers (floating-point GEMM results can depend on a batch's shape).
"""

from __future__ import annotations

import functools

import numpy as np

from lib.devices import to_host
from lib.env import socnavenv as sn
from lib.env.policies import Policy
from lib.kernels.fast_encoder import make_encoder
from lib.models import saved_models
from lib.models.controller import act_batch, unflatten
from lib.models.mdn_rnn import DONE_THRESHOLD, done_logit_threshold, reward_and_continue, sample

# Keys the stream of an episode's seed that draws V's posterior noise (temperature > 0),
# apart from the streams the environment draws from the same seed.
_LATENT_NOISE = 0x7A
# Keys the stream that draws an exploring agent's action noise (02 --agent).
_ACTION_NOISE = 0xAC


class WorldModelsAgent(Policy):
    """V + M + C over the real environment's egocentric frames.

    Args:
        n: lockstep slots.
        vae: `ConvVAE`; rnn: `MDNRNN` (same z size).
        params: (P, n_params) controller parameters, one row per candidate.
        candidate_of: maps an episode index (in the runner's seed list) to a
            row of `params`; default: all episodes use row 0.
        temperature: 0 (default) feeds V's posterior mean as z; tau > 0 samples
            z from the posterior with its standard deviation scaled by sqrt(tau),
            with noise drawn from each episode's seed.
        encoder: `lib.kernels.fast_encoder.make_encoder(vae)` to reuse (building one
            copies and transforms V's weights); made from `vae` if None.
    """

    name = "world_models"
    needs_image = True

    def __init__(self, n, vae, rnn, params, candidate_of=None, temperature=0.0, encoder=None):
        super().__init__(n)
        self.temperature = float(temperature)
        self.rngs = [np.random.default_rng(i) for i in range(n)]
        self.vae = vae
        # V's weights are fixed while the agent lives.
        self.encoder = make_encoder(vae) if encoder is None else encoder
        self.rnn = rnn
        self.device, self.xp = rnn.device, rnn.xp  # on the CPU, `send` returns its input
        self.z_size = rnn.z_size
        self.hidden_size = rnn.hidden_size
        self.weights, self.biases = (
            self.device.send(w)
            for w in unflatten(
                np.atleast_2d(params), self.z_size, self.hidden_size, rnn.action_size
            )
        )
        self.candidate_of = candidate_of or (lambda k: 0)
        self.which = self.device.send(np.zeros(n, np.int64))
        self.h, self.c = rnn.initial_state(n)

    def reset(self, slots, seeds, episodes=None):
        slots = np.asarray(slots)
        on_device = self.device.send(slots)
        self.h[on_device] = 0.0
        self.c[on_device] = 0.0
        if episodes is not None:
            which = np.array([self.candidate_of(int(k)) for k in episodes], np.int64)
            self.which[on_device] = self.device.send(which)
        for i, seed in zip(slots, seeds):
            self.rngs[i] = np.random.default_rng([int(seed), _LATENT_NOISE])

    def encode(self, images, slots):
        """z of host frames `images` (B, S, S, 3) uint8, as (B, Z) float32 on the device."""
        mu, logvar = self.encoder(images)
        if self.temperature == 0:
            return mu
        eps = np.stack([self.rngs[i].standard_normal(mu.shape[1], dtype=np.float32) for i in slots])
        xp = self.xp
        std = xp.exp(0.5 * logvar) * np.float32(np.sqrt(self.temperature))  # float32 under NumPy 2
        return (mu + std * self.device.send(eps)).astype(np.float32)

    def act(self, sim, images=None):
        # Only the slots still playing are computed: a group's batch shapes then
        # depend only on its own episodes, never on which worker runs it.
        live = np.flatnonzero(sim.active) if sim is not None else np.arange(len(images))
        actions = np.zeros((self.n, 2), np.float32)
        if len(live) == 0:
            return actions
        # With every slot playing, views instead of gathers (a gather copies every frame).
        sel = slice(None) if len(live) == self.n else live
        on_device = sel if len(live) == self.n else self.device.send(live)
        z = self.encode(images[sel], live)  # in: the frames
        h, c = self.h[on_device], self.c[on_device]
        a = self.choose(z, h, c, live, on_device)
        actions[sel] = to_host(a)  # out: the actions
        out = self.rnn.step(z, a, (h, c), mixture=False)
        self.h[on_device], self.c[on_device] = out.state
        return actions

    def choose(self, z, h, c, live, on_device):
        """The live slots' actions, on M's device: C's product of [z, h] (a planner
        overrides this).

        Args:
            z, h, c: (L, ...) the live slots' latents and M state, on M's device.
            live: (L,) host indices of the live slots.
            on_device: their index (a slice when all are live) on M's device.
        """
        return act_batch(self.weights, self.biases, self.which[on_device], z, h)


class EpisodeStreams:
    """One NumPy generator per lockstep slot, reseeded from each episode's seed and a
    stream `key`, so what a slot draws follows its episode, never the slot, the batch or
    the worker (the planner's candidates, an exploring agent's action noise)."""

    def __init__(self, n: int, key: int):
        self.key = key
        self.rngs = [np.random.default_rng([i, key]) for i in range(n)]

    def reset(self, slots, seeds) -> None:
        for i, seed in zip(np.asarray(slots), seeds):
            self.rngs[i] = np.random.default_rng([int(seed), self.key])

    def of(self, slots) -> list:
        """The generators of `slots` (host indices), in order."""
        return [self.rngs[i] for i in slots]


class ExploringAgent(WorldModelsAgent):
    """A World Models agent whose C acts with Gaussian noise: the rollouts of a trained
    C that the paper's iterative procedure feeds back into M's training (02 --agent).

    The noise (standard deviation `noise` per action, the sum clipped to [-1, 1]) is
    drawn from each episode's seed, so the episodes do not depend on the lockstep
    batch or the workers, and M steps with the action played, as the environment does.

    Args: as `WorldModelsAgent` with one C (`params` (n_params,) or (1, n_params)), and
        noise: float >= 0, the actions' noise.
    """

    name = "exploring_agent"

    def __init__(self, n, vae, rnn, params, noise, encoder=None):
        super().__init__(n, vae, rnn, params, encoder=encoder)
        if not noise >= 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.noise = float(noise)
        self.action_noise = EpisodeStreams(n, _ACTION_NOISE)

    def reset(self, slots, seeds, episodes=None):
        super().reset(slots, seeds, episodes)
        self.action_noise.reset(slots, seeds)

    def choose(self, z, h, c, live, on_device):
        a = super().choose(z, h, c, live, on_device)
        if self.noise == 0:
            return a
        eps = np.stack([r.standard_normal(2, dtype=np.float32) for r in self.action_noise.of(live)])
        eps = self.device.send(eps * np.float32(self.noise))
        return self.xp.clip(a + eps, -1.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _saved_agent(data_dir: str, name: str):
    """C, V and M as 08 loads them, once per process (02's workers build many agents)."""
    controller, _, vae, _, rnn, _ = saved_models.load_agent(data_dir, name)
    return controller.get_flat()[None], vae, rnn, make_encoder(vae)


def exploring_agent(data_dir: str, name: str, noise: float, n: int) -> ExploringAgent:
    """An `ExploringAgent` of `n` slots playing `data_dir/models/<name>.npz` with the V
    and M it was trained with: the policy factory 02 --agent sends to its workers
    (bind the first three arguments with `functools.partial`; it pickles)."""
    params, vae, rnn, encoder = _saved_agent(data_dir, name)
    return ExploringAgent(n, vae, rnn, params, noise, encoder=encoder)


class PlanningAgent(WorldModelsAgent):
    """A World Models agent with one C whose action a planner may replace
    (`lib.control.dream_planner`, `lib.control.lookahead_planner`): it checks that there is one C and
    counts the steps planned and those whose action is not C's.

    Args: as `WorldModelsAgent`, with `params` (n_params,) or (1, n_params).
    """

    name = "world_models_planner"

    def __init__(self, n, vae, rnn, params, temperature=0.0, encoder=None):
        params = np.atleast_2d(params)
        if len(params) != 1:
            raise ValueError(f"the planner takes one controller, got {len(params)}")
        super().__init__(n, vae, rnn, params, temperature=temperature, encoder=encoder)
        self.steps = self.replaced = 0

    def count(self, replaced) -> None:
        """Adds one planned step per entry of `replaced` (bool, any device)."""
        self.steps += len(replaced)
        self.replaced += int(to_host(replaced).sum())

    @property
    def replaced_fraction(self):
        """The fraction of steps so far where the executed action is not C's."""
        return self.replaced / max(self.steps, 1)


# A soft dream (outcome-head M) stops an agent once the probability that its
# episode still runs is below this: what is left could change its return by less.
SOFT_END = 1e-3


def dream_rollouts(
    rnn,
    params,
    which,
    z0,
    tau,
    rng,
    max_steps=sn.MAX_STEPS,
    done_threshold=DONE_THRESHOLD,
    done_pos_weight=1.0,
    endings=False,
):
    """Plays controllers inside M, all agents in lockstep.

    With M's reward and done heads (the paper's), an episode ends at the first
    step whose calibrated done probability exceeds `done_threshold`, and the
    return sums the reward head. With an outcome-head M
    (`MDNRNN(outcome_head=True)`) nothing is thresholded: each step's expected
    reward is weighted by the probability that the episode still runs (the
    product of M's continue probabilities so far), so a return is M's expected
    return along its sampled z, and no dream return exceeds the task's best
    (+1); an agent stops once that probability is below `SOFT_END`, and its
    length is the step where it first fell below one half.

    Args:
        rnn: `MDNRNN` with reward and done heads, or an outcome head.
        params: (P, n_params) controller parameters.
        which: (N,) int, the candidate row of each agent.
        z0: (N, z_size) float32 starting latents (from real first frames).
        tau: temperature of M's samples.
        rng: numpy Generator for all sampling.
        max_steps: the episode limit; reaching it adds the timeout reward, a
            rule of the task rather than something M must learn.
        done_threshold: an episode ends when M's done probability exceeds this
            (reward and done heads only).
        done_pos_weight: the positive-class weight M's done head was trained
            with (its sidecar's `done_pos_weight`). Weighting positives by w
            shifts the head's logit by log(w); it is subtracted here so the
            probability is calibrated (see `lib.models.mdn_rnn.calibrated_done_logit`).
        endings: also return how each dream ended (`ENDINGS`).

    Returns:
        (returns (N,) float64, lengths (N,) int64), and with `endings` a third array,
        (N, 4) float64: the probability of each ending in `ENDINGS` order (a soft dream's
        probability mass, which sums to at least 1 - SOFT_END; a thresholded dream's one
        ending, its kind read from the reward head at the ending step).
    """
    if not rnn.can_dream:
        raise ValueError("dreaming needs an M with reward and done heads (--mode reward or dream)")
    device = rnn.device  # M's: everything below but the bookkeeping stays there
    weights, biases = (
        device.send(w) for w in unflatten(params, rnn.z_size, rnn.hidden_size, rnn.action_size)
    )
    which = device.send(np.asarray(which))
    n = len(z0)
    state = rnn.initial_state(n)
    z = device.send(np.asarray(z0, np.float32))
    ledger = DreamLedger(rnn, n, done_threshold, done_pos_weight, endings)
    rows = np.arange(n)
    for _ in range(max_steps):
        actions = act_batch(weights, biases, which, z, state[0])
        out = rnn.step(z, actions, state)
        state = out.state
        if not ledger.record(out, rows).any():
            break
        z = sample(out.mixture, tau, rng)  # in: the sampling noise, drawn on the host
    return ledger.result()


class DreamLedger:
    """The returns, lengths and endings of N dreams, step by step, from M's heads: with
    reward and done heads an episode ends at the first step whose calibrated done
    probability exceeds the threshold, and its return sums the reward head; with an
    outcome head each step's expected reward is weighted by the probability that the
    episode still runs (see `dream_rollouts`). Shared by `dream_rollouts` and
    `lib.control.pixel_dream`.

    Args:
        rnn: the M whose step outputs `record` reads; n: the dreams;
        done_threshold, done_pos_weight, endings: as `dream_rollouts`.
    """

    def __init__(self, rnn, n, done_threshold=DONE_THRESHOLD, done_pos_weight=1.0, endings=False):
        self.rnn = rnn
        self.alive = np.ones(n, bool)
        self.running = np.ones(n)  # soft dream: P(the episode still runs); stays 1 otherwise
        self.returns = np.zeros(n)
        self.lengths = np.zeros(n, np.int64)
        self.ends = np.zeros((n, len(ENDINGS))) if endings else None
        self.logit_threshold = done_logit_threshold(done_pos_weight, done_threshold)

    def record(self, out, rows) -> np.ndarray:
        """Adds one step of M's output `out` for the dreams `rows` (in out's order);
        returns (len(rows),) bool, which of them still run."""
        if self.rnn.outcome_head:
            # out: expected reward and continue probability, in one transfer
            reward, p_continue = to_host(self.rnn.xp.stack(reward_and_continue(out)))
            running = self.running[rows]
            self.returns[rows] += running * reward
            self.lengths[rows] += running >= 0.5
            if self.ends is not None:  # success, collision, out of map: classes 1-3
                self.ends[rows, :3] += running[:, None] * to_host(out.outcome)[:, 1:4]
            self.running[rows] = running * p_continue
            self.alive[rows] = self.running[rows] >= SOFT_END
        else:
            # out: reward and done logit, in one transfer
            reward, done_logit = to_host(self.rnn.xp.stack([out.reward, out.done_logit]))
            reward = reward.astype(np.float64)
            done = done_logit > self.logit_threshold
            alive = self.alive[rows]
            if self.ends is not None:
                self.ends[rows[alive & done], ending_kind(reward[alive & done])] = 1.0
            self.returns[rows] += np.where(alive, reward, 0.0)
            self.lengths[rows] += alive
            self.alive[rows] = alive & ~done
        return self.alive[rows]

    def result(self):
        """(returns, lengths), and with endings the (N, 4) endings, as `dream_rollouts`;
        the dreams still running time out."""
        # The timeout, weighted by P(still running): 1 in a thresholded dream.
        still = np.where(self.alive, self.running, 0.0)
        returns = self.returns + still * sn.TIMEOUT_REWARD
        if self.ends is None:
            return returns, self.lengths
        ends = self.ends.copy()
        ends[:, 3] = still
        return returns, self.lengths, ends


# How a dream ends, in the order of `dream_rollouts(..., endings=True)`'s columns.
ENDINGS = sn.OUTCOMES[1:]  # success, collision, out_of_map, timeout


def ending_kind(reward):
    """(K,) int: the `ENDINGS` column of thresholded dreams that end with these rewards
    (M's reward head at the ending step): nearest of the task's ending rewards."""
    rewards = np.array([sn.REACH_REWARD, sn.COLLISION_REWARD, sn.OUTOFMAP_REWARD])
    return np.abs(np.asarray(reward, np.float64)[:, None] - rewards[None, :]).argmin(axis=1)
