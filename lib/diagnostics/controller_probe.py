"""How far a linear controller gets on each input: DAgger onto a teacher, then real episodes.

The probe (`lib.diagnostics.probe`) says how much of the task is linearly readable
from a feature set. This says what that is worth as a policy: for each input it
fits a linear C, tanh(W x + b), to a privileged teacher by DAgger (exactly as
`07_train_controller.py --imitate` fits the agent's C on [z, h]) and plays it on
held-out episodes. Rows that differ only in C's input then locate the limit:

- "z": V's latent alone;
- "zh": [z, h], the agent's own input (V, then M reading the actions played);
- "pixels": the frame itself, averaged over pool x pool blocks (no V at all);
- "state": hand-made egocentric features of the true state (`state_features`),
  the "good features" a linear controller is usually given.

If "pixels" beats "zh", the frame holds what a linear C needs and V's compression
loses it; if "state" does not beat "zh", a better representation alone would not
get a linear C further.

All inputs run the same V and M as the agent (M reads the action actually played),
so "zh" here is the agent's C by imitation, before 07's CMA-ES.
"""

from __future__ import annotations

import numpy as np

from lib.control.imitation import RIDGE, LinearFit, dagger_rounds
from lib.devices import to_host
from lib.diagnostics.probe import pool_pixels
from lib.env import socnavenv as sn
from lib.env.evaluation import summarize
from lib.env.policies import Policy

INPUTS = ("z", "zh", "pixels", "state")
STATE_PEOPLE = 3  # nearest people described by `state_features`


def state_features(sim: sn.SocNavSim, slots: np.ndarray) -> np.ndarray:
    """(len(slots), 4 + 6 * STATE_PEOPLE + 6) float32 egocentric features of the true state.

    In the robot's frame (x forward, y left): the goal's bearing (cos, sin) and its
    distance (capped at 4 m, over 4); for each of the `STATE_PEOPLE` nearest people,
    in order of distance and weighted by w = exp(-distance): w x, w y, w, and w times
    their velocity (vx, vy) and their angular momentum about the robot (x vy - y vx);
    then the walls: exp(-gap) to each of the four walls, and their summed push in
    the robot's frame (x, y). A person slot with nobody (fewer people) is all zeros.
    """
    slots = np.asarray(slots)
    robot = sim.robot[slots].astype(np.float64)
    x, y, th = robot[:, 0], robot[:, 1], robot[:, 2]
    c, s = np.cos(th), np.sin(th)

    def to_robot(dx, dy):
        cc, ss = (c, s) if np.ndim(dx) == 1 else (c[:, None], s[:, None])
        return cc * dx + ss * dy, -ss * dx + cc * dy

    gx, gy = to_robot(sim.goal[slots, 0] - x, sim.goal[slots, 1] - y)
    gd = np.maximum(np.hypot(gx, gy), 1e-9)
    cols = [gx / gd, gy / gd, np.minimum(gd, 4.0) / 4.0, np.ones_like(gd)]
    humans = sim.humans[slots].astype(np.float64)  # (B, H, 4): x, y, heading, speed
    hx, hy = to_robot(humans[:, :, 0] - x[:, None], humans[:, :, 1] - y[:, None])
    vx, vy = to_robot(
        humans[:, :, 3] * np.cos(humans[:, :, 2]), humans[:, :, 3] * np.sin(humans[:, :, 2])
    )
    order = np.argsort(np.hypot(hx, hy), axis=1, kind="stable")
    for k in range(STATE_PEOPLE):
        if k >= humans.shape[1]:
            cols += [np.zeros_like(gd)] * 6
            continue
        kth = order[:, k : k + 1]
        px, py, pvx, pvy = (np.take_along_axis(a, kth, axis=1)[:, 0] for a in (hx, hy, vx, vy))
        w = np.exp(-np.hypot(px, py))
        cols += [w * px, w * py, w, w * pvx, w * pvy, w * (px * pvy - py * pvx)]
    half = sim.config.half
    gaps = np.exp(-np.stack([half - x, half + x, half - y, half + y], axis=1))
    push_x, push_y = gaps[:, 1] - gaps[:, 0], gaps[:, 3] - gaps[:, 2]  # world frame, away
    fx, fy = to_robot(push_x, push_y)
    cols += [gaps[:, 0], gaps[:, 1], gaps[:, 2], gaps[:, 3], fx, fy]
    return np.stack(cols, axis=1).astype(np.float32)


def input_size(name: str, z_size: int, hidden_size: int, image_size: int, pool: int) -> int:
    """The length of input `name`'s feature vector."""
    if name not in INPUTS:
        raise ValueError(f"unknown input {name!r}; choose from {', '.join(INPUTS)}")
    return {
        "z": z_size,
        "zh": z_size + hidden_size,
        "pixels": 3 * (image_size // pool) ** 2,
        "state": 4 + 6 * STATE_PEOPLE + 6,
    }[name]


class InputController(Policy):
    """A linear C, tanh(W x + b), on one input, with V and M run as the agent runs them.

    With a teacher, every step also records (x, the teacher's action) in `fit`, and
    the teacher's action is played with probability `beta` (DAgger's mixture). M
    always reads the action played.

    Args:
        n: lockstep slots.
        name: one of INPUTS.
        encoder: V's encoder (frames -> (mu, logvar)); rnn: M (`MDNRNN`, on the CPU),
            or None when the input does not need h.
        weights: (A, D) and biases: (A,) float arrays, C's parameters.
        pool: the pixels' block size.
        teacher, beta, fit: the DAgger labeller (None for a plain C).
        seed: seeds the mixture's draws.
    """

    needs_image = True

    def __init__(
        self,
        n,
        name,
        encoder,
        rnn,
        weights,
        biases,
        pool=2,
        teacher=None,
        beta=0.0,
        fit=None,
        seed=0,
    ):
        super().__init__(n)
        if name == "zh" and rnn is None:
            raise ValueError("input zh needs M")
        self.name, self.encoder, self.rnn, self.pool = name, encoder, rnn, int(pool)
        self.weights = np.asarray(weights, np.float64)
        self.biases = np.asarray(biases, np.float64)
        self.teacher, self.beta, self.fit = teacher, float(beta), fit
        self.mix = np.random.default_rng([int(seed), 0xC0DE])
        if rnn is None:
            self.h, self.c = np.zeros((n, 0), np.float32), np.zeros((n, 0), np.float32)
        else:  # M's own zero state (a map M with velocity carries more than h in c)
            self.h, self.c = (to_host(v) for v in rnn.initial_state(n))

    def reset(self, slots, seeds, episodes=None):
        slots = np.asarray(slots)
        self.h[slots] = 0.0
        self.c[slots] = 0.0
        if self.teacher is not None:
            self.teacher.reset(slots, seeds, episodes)

    def features(self, sim, images, live, z):
        """The input's (L, D) features of the live slots."""
        if self.name == "z":
            return z
        if self.name == "zh":
            return np.concatenate([z, self.h[live]], axis=1)
        if self.name == "pixels":
            return pool_pixels(images[live], self.pool)
        return state_features(sim, live)

    def act(self, sim, images=None):
        live = np.flatnonzero(sim.active)
        actions = np.zeros((self.n, 2), np.float32)
        if len(live) == 0:
            return actions
        z = None
        if self.name in ("z", "zh") or self.rnn is not None:
            z = np.asarray(self.encoder(images[live])[0], np.float32)
        x = self.features(sim, images, live, z)
        a = np.tanh(x @ self.weights.T + self.biases).astype(np.float32)
        if self.teacher is not None:
            seen = images if self.teacher.needs_image else None
            told = sn.applied_actions(self.teacher.act(sim, seen))[live]
            self.fit.add(x, told)
            a = np.where((self.mix.random(len(live)) < self.beta)[:, None], told, a)
        a = a.astype(np.float32)
        actions[live] = a
        if self.rnn is not None:
            out = self.rnn.step(z, a, (self.h[live], self.c[live]), mixture=False)
            self.h[live], self.c[live] = out.state
        return actions


def imitate(
    name,
    encoder,
    rnn,
    teacher,
    config,
    seed,
    iterations,
    episodes,
    z_size=0,
    image_size=64,
    pool=2,
    penalty=RIDGE,
    on_iteration=None,
    on_episode=None,
):
    """Fits a linear C on input `name` to `teacher` by DAgger (as `imitation.dagger`:
    the teacher drives iteration 0, C the later ones, on the same seed streams).

    Args:
        name: one of INPUTS; encoder, rnn: V's encoder and M (None when not needed).
        z_size: V's latent size (inputs z and zh).
        teacher: one of `imitation.TEACHERS`, or a factory `teacher(n)` of a `Policy`.
        config: the environment; seed: the run's seed.
        iterations, episodes: DAgger iterations (>= 1) and episodes per iteration (>= 1).
        image_size, pool: the frames' size and the pixels' block size.
        penalty: the ridge penalty per recorded step.
        on_iteration: called with (k, summary of the iteration's episodes, steps so far);
            on_episode with each finished episode.

    Returns:
        (weights (A, D), biases (A,)) float64.
    """
    hidden = 0 if rnn is None else rnn.hidden_size
    size = input_size(name, z_size, hidden, image_size, pool)
    fit = LinearFit(size)

    def learner(n, params, teacher_policy, beta, seed_k):
        weights, biases = _unflatten(params, size)
        return InputController(
            n, name, encoder, rnn, weights, biases, pool, teacher_policy, beta, fit, seed=seed_k
        )

    params = None
    rounds = dagger_rounds(
        learner, fit, teacher, config, seed, iterations, episodes, penalty, on_episode
    )
    for k, params, played in rounds:
        if on_iteration is not None:
            on_iteration(k, summarize(played), fit.count)
    return _unflatten(params, size)


def _unflatten(params, size):
    """(weights (2, size), biases (2,)) float64 of C's flat `[W.ravel(), b]`."""
    flat = np.asarray(params, np.float64)
    return flat[:-2].reshape(2, size), flat[-2:]
