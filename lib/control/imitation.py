"""C's starting point by imitation: DAgger from a privileged teacher onto [z, h].

CMA-ES in C's 578 dimensions, started from zero, plateaus at 35–50 % success
(docs/experiments.md): its fitness is a handful of noisy episodes per candidate,
and the search has to find steering in [z, h] from scratch. A teacher that reads
the true state (greedy_avoid's rules, or the oracle's look-ahead) already knows
what to do; this module fits the linear C to do what the teacher would do, on the
[z, h] the agent actually sees, with DAgger (Ross, Gordon and Bagnell 2011):

1. iteration 0: the teacher drives; every step records (x = [z, h], teacher's action);
2. iteration k > 0: C of iteration k−1 drives, and the teacher labels the states C
   reaches (so C learns to recover from its own mistakes);
3. after each iteration C is refitted on everything recorded so far.

The fit is ridge regression of atanh(the teacher's action, clipped to ±ACTION_CLIP)
on the centred features, so tanh(W x + b) is C's action. Only sufficient statistics
are kept (x'x, x'u, sums), so memory does not grow with the steps.

The agent stays the paper's: V and M unchanged, C linear on [z, h], acting from
pixels. The teacher is used in training only; 07's CMA-ES then continues from the
imitated C on the task's own return (`07_train_controller.py --imitate`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lib.control.agent import WorldModelsAgent
from lib.devices import to_host
from lib.env import socnavenv as sn
from lib.env.evaluation import summarize
from lib.env.policies import make_policy
from lib.env.rollouts import run_episodes
from lib.kernels.fast_encoder import make_encoder
from lib.seeding import derive_seeds

TEACHERS = ("greedy", "greedy_avoid", "oracle", "cautious_oracle")
ACTION_CLIP = 0.96  # atanh(0.96) = 1.95: a saturated teacher action is a finite target
RIDGE = 1e-3  # penalty per recorded step, on features of order one (z ~ N(0, 1), h in [-1, 1])
LOCKSTEP = 64


class LinearFit:
    """Ridge regression of atanh(actions) on features, from sufficient statistics.

    Args:
        size: feature size D; actions: action size A.
    """

    def __init__(self, size: int, actions: int = 2):
        self.count = 0
        self.sx = np.zeros(size)
        self.su = np.zeros(actions)
        self.xx = np.zeros((size, size))
        self.xu = np.zeros((size, actions))

    def add(self, x: np.ndarray, actions: np.ndarray) -> None:
        """Adds rows x (N, D) labelled with actions (N, A) in [-1, 1]."""
        x = np.asarray(x, np.float64)
        u = np.arctanh(np.clip(np.asarray(actions, np.float64), -ACTION_CLIP, ACTION_CLIP))
        self.count += len(x)
        self.sx += x.sum(0)
        self.su += u.sum(0)
        self.xx += x.T @ x
        self.xu += x.T @ u

    def solve(self, penalty: float = RIDGE) -> np.ndarray:
        """C's flat parameters `[W.ravel(), b]` (float32) minimising
        |W (x − mean x) + mean u − u|² + penalty · count · |W|²."""
        if self.count == 0:
            raise ValueError("no steps recorded yet")
        mx, mu = self.sx / self.count, self.su / self.count
        cxx = self.xx - self.count * np.outer(mx, mx)
        cxu = self.xu - self.count * np.outer(mx, mu)
        a = cxx + penalty * self.count * np.eye(len(mx))
        w = np.linalg.solve(a, cxu).T  # (A, D)
        b = mu - w @ mx
        return np.concatenate([w.ravel(), b]).astype(np.float32)


class TeacherLabels(WorldModelsAgent):
    """The agent (V + M + C) that records, at each step, its [z, h] and the action
    the teacher would take in the same state.

    With probability `beta` per step the teacher's action is played instead of
    C's (DAgger's mixture; 1 is pure teacher, 0 pure C). M always reads the action
    that was played, as in the agent.

    Args:
        n, vae, rnn, params, encoder: as `WorldModelsAgent`.
        teacher: a `Policy` on the true state (`make_policy(name, n)`).
        beta: probability of the teacher's action.
        fit: the `LinearFit` the labelled steps go to.
        seed: seeds the mixture's draws.
    """

    def __init__(self, n, vae, rnn, params, teacher, beta, fit, seed=0, encoder=None):
        super().__init__(n, vae, rnn, params, encoder=encoder)
        self.teacher, self.beta, self.fit = teacher, float(beta), fit
        self.mix = np.random.default_rng([int(seed), 0xDA66])

    def reset(self, slots, seeds, episodes=None):
        super().reset(slots, seeds, episodes)
        self.teacher.reset(slots, seeds, episodes)

    def act(self, sim, images=None):
        # The teacher's actions for every slot; `choose` (called by the agent's own step)
        # keeps the live slots' ones.
        seen = images if self.teacher.needs_image else None
        self.told = sn.applied_actions(self.teacher.act(sim, seen))
        return super().act(sim, images)

    def choose(self, z, h, c, live, on_device):
        told = self.told[live]
        self.fit.add(np.concatenate([to_host(z), to_host(h)], axis=1), told)
        a = to_host(super().choose(z, h, c, live, on_device))
        a = np.where((self.mix.random(len(live)) < self.beta)[:, None], told, a)
        return self.device.send(a.astype(np.float32))


@dataclasses.dataclass
class Iteration:
    """What one DAgger iteration did: who drove, and how their episodes ended."""

    iteration: int
    driver: str  # "teacher" or "C"
    episodes: int
    steps: int  # labelled steps recorded in total so far
    success_rate: float
    collision_rate: float
    out_of_map_rate: float


def dagger_rounds(
    make_learner, fit, teacher, config, seed, iterations, episodes, penalty=RIDGE, on_episode=None
):
    """DAgger's loop, for any learner that records into `fit` (a `LinearFit`).

    Iteration k plays `episodes` episodes of seed stream "imitation-k" with
    `make_learner(n, params, teacher_policy, beta, seed + k)`, where params is C's flat
    parameters so far (zeros at first; then `fit.solve(penalty)`), beta 1 in the first
    iteration (the teacher drives) and 0 after (C drives, the teacher labels); then
    refits. Yields (k, params after the refit, the iteration's finished episodes).

    Args:
        teacher: one of TEACHERS, or a factory `teacher(n)` of a `Policy` for n slots.
        iterations, episodes: DAgger iterations and episodes per iteration (both >= 1).
        on_episode: called with each finished episode.
    """
    if isinstance(teacher, str) and teacher not in TEACHERS:
        raise ValueError(f"unknown teacher {teacher!r}; choose from {', '.join(TEACHERS)}")
    if iterations < 1 or episodes < 1:
        raise ValueError("iterations and episodes must be >= 1")
    make_teacher = (lambda n: make_policy(teacher, n)) if isinstance(teacher, str) else teacher
    params = np.zeros(fit.xu.size + len(fit.su), np.float32)
    for k in range(iterations):
        n = min(LOCKSTEP, episodes)
        learner = make_learner(n, params, make_teacher(n), 1.0 if k == 0 else 0.0, seed + k)
        played = []

        def finished(ep, played=played):
            played.append(ep)
            if on_episode is not None:
                on_episode(ep)

        run_episodes(learner, derive_seeds(seed, f"imitation-{k}", episodes), config, n, finished)
        params = fit.solve(penalty)
        yield k, params, played


def dagger(
    vae,
    rnn,
    teacher,
    config: sn.EnvConfig,
    seed: int,
    iterations: int,
    episodes: int,
    penalty: float = RIDGE,
    encoder=None,
    on_iteration=None,
    on_episode=None,
):
    """Fits the linear C to `teacher` by DAgger.

    Args:
        vae, rnn: V and M (on the same device); encoder: V's fast encoder, made if None.
        teacher: one of TEACHERS, or a factory `teacher(n)` of a `Policy` for n slots.
        config: the environment.
        seed: the run's seed; iteration k plays the episodes of stream "imitation-k".
        iterations: DAgger iterations (≥ 1); the first is driven by the teacher.
        episodes: episodes per iteration.
        penalty: the ridge penalty per recorded step.
        on_iteration: called with each `Iteration`; on_episode with each finished episode.

    Returns:
        (C's flat parameters (n_params,) float32 after the last refit, [Iteration, ...]).
    """
    encoder = make_encoder(vae) if encoder is None else encoder  # one copy for every iteration
    fit = LinearFit(rnn.z_size + rnn.hidden_size, rnn.action_size)

    def learner(n, params, teacher_policy, beta, seed_k):
        return TeacherLabels(
            n, vae, rnn, params[None], teacher_policy, beta, fit, seed=seed_k, encoder=encoder
        )

    params, history = None, []
    rounds = dagger_rounds(
        learner, fit, teacher, config, seed, iterations, episodes, penalty, on_episode
    )
    for k, params, played in rounds:
        rates = summarize(played)
        row = Iteration(
            k,
            "teacher" if k == 0 else "C",
            len(played),
            fit.count,
            rates["success_rate"],
            rates["collision_rate"],
            rates["out_of_map_rate"],
        )
        history.append(row)
        if on_iteration is not None:
            on_iteration(row)
    return params, history
