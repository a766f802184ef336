"""Planning with M's look-ahead head (beyond the paper), and the data the head learns from.

The agent (`LookaheadPlanner`): at every real step, C proposes its action; the
head (`lib.models.lookahead_heads.LookaheadHead`) forecasts, from M's state and V's
last three z, the probability that holding each candidate action for the next
H steps ends the episode in a collision or outside the room (a head with pixels also
reads the frame's centre of the same frames). The candidates are
C's action and a G x G grid of constant actions over [-1, 1]^2, all of an
agent's scored in one batch and all agents' in one product. When C's own
action is riskier than `threshold`, the planner executes the candidate that
minimises `risk + cost * |a - a_C|^2` (the safest action not far from C's);
otherwise it executes C's action, bit for bit. A threshold of 1 is the linear
agent.

The data (`collect`): the agent plays real episodes (C, or the planner of an
earlier round, with a uniform random action instead of the chosen one at a
fraction `explore` of steps, so that the data holds risky states and varied
actions). At every step each of `LABEL_GRID` x `LABEL_GRID` grid actions and the
action taken is held for `max(horizons)` steps from a copy of the true state
(`hold_failures`: the environment's own step, nothing privileged reaches the
agent): the first step at which the copy collides or leaves the room is the
label. Rows where some action fails are kept, and a fraction `keep_safe` of the
others (they are most rows and easy). This is the simulator's privilege at
training time only, as the oracle teacher of C's DAgger; the planner reads
pixels through V and M.
"""

from __future__ import annotations

import numpy as np
from chainer import backend
from chainer.backend import CpuDevice

from lib.control.agent import PlanningAgent
from lib.devices import to_host
from lib.env import socnavenv as sn
from lib.models.lookahead_heads import HORIZONS, crops, features, pixel_features, pixel_size

# The planner's defaults, chosen on validation episodes (docs/experiments.md,
# "A look-ahead head for the planner").
GRID = 9  # candidate actions per axis
THRESHOLD = 0.1  # C's action is replaced when its forecast risk exceeds this
COST = 0.0  # per unit of squared distance from C's action (0: the safest candidate)
HORIZON = 10  # steps ahead (1 s); one of the head's horizons
assert HORIZON in HORIZONS

LABEL_GRID = 5  # labelled actions per axis (and the action taken)


def action_grid(n: int) -> np.ndarray:
    """(n * n, 2) float32: every (advance, rotation) of `n` even steps over [-1, 1]."""
    g = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    return np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)


class LookaheadSettings:
    """The look-ahead planner's knobs, checked once (`ValueError` names the bad one).

    Args:
        grid: G, candidate actions per axis (>= 2; G * G constant actions beside C's).
        threshold: C's action is replaced only when its risk exceeds this, in [0, 1].
        cost: penalty per unit of squared distance from C's action (>= 0).
        horizon: steps ahead, one of the head's horizons (checked by the agent).
    """

    def __init__(self, grid=GRID, threshold=THRESHOLD, cost=COST, horizon=HORIZON):
        if int(grid) != grid or grid < 2:
            raise ValueError(f"grid must be a whole number >= 2, got {grid}")
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if not 0 <= cost < float("inf"):
            raise ValueError(f"cost must be >= 0, got {cost}")
        if int(horizon) != horizon or horizon < 1:
            raise ValueError(f"horizon must be a whole number >= 1, got {horizon}")
        self.grid, self.threshold = int(grid), float(threshold)
        self.cost, self.horizon = float(cost), int(horizon)

    def to_dict(self):
        return dict(vars(self))


def choose_actions(risk, candidates, threshold, cost):
    """The executed actions and which of them replace C's.

    Args:
        risk: (B, K) forecast risks of `candidates` (B, K, A), whose column 0 is C's action.
        threshold, cost: as in `LookaheadSettings`.

    Returns:
        ((B, A) actions, (B,) bool replaced), on the inputs' device. Unreplaced
        rows are C's action exactly.
    """
    xp = backend.get_array_module(risk)
    c_action = candidates[:, 0]
    score = risk + np.float32(cost) * ((candidates - c_action[:, None]) ** 2).sum(-1)
    pick = xp.argmin(score, axis=1)  # the first of equals: C's own when it ties
    replace = (risk[:, 0] > threshold) & (pick > 0)
    chosen = candidates[xp.arange(len(pick)), pick]
    return xp.where(replace[:, None], chosen, c_action), replace


class MotionMemory:
    """Each slot's vector (V's z, or a frame's `crops`) at its two previous frames, for
    `lib.models.lookahead_heads.features` and `pixel_features`.

    At an episode's first step both are the present one, at its second the older
    one is the previous (nothing before the episode is made up).
    """

    def __init__(self, n, z_size, device, dtype=np.float32):
        self.z1 = device.send(np.zeros((n, z_size), dtype))
        self.z2 = device.send(np.zeros((n, z_size), dtype))
        self.count = np.zeros(n, np.int64)
        self.device = device

    def reset(self, slots):
        self.count[np.asarray(slots)] = 0

    def step(self, z, live, on_device):
        """(z1, z2) for the live slots' present `z`, then remembers `z`."""
        xp = backend.get_array_module(z)
        count = self.device.send(self.count[live])[:, None]
        z1 = xp.where(count > 0, self.z1[on_device], z)
        z2 = xp.where(count > 1, self.z2[on_device], z1)
        self.z2[on_device] = z1
        self.z1[on_device] = z
        self.count[live] += 1
        return z1, z2


class LookaheadPlanner(PlanningAgent):
    """The World Models agent whose action the look-ahead head can veto (module docstring).

    Args:
        n, vae, rnn, params, temperature, encoder: as `WorldModelsAgent` (one C).
        head: `LookaheadHead` on M's device, for this V's z and M's h; None plays
            C's action (the first round of `collect`).
        settings: `LookaheadSettings` (defaults if None).
        pixels: whether to keep the frames' `crops` (for `plan`); by default, whether
            the head reads them.
    """

    def __init__(self, n, vae, rnn, params, head, settings=None, temperature=0.0, encoder=None,
                 pixels=None):  # fmt: skip
        if head is not None and (head.z_size, head.hidden_size) != (rnn.z_size, rnn.hidden_size):
            raise ValueError(
                f"the look-ahead head reads z {head.z_size} and h {head.hidden_size}, "
                f"but V and M give {rnn.z_size} and {rnn.hidden_size}"
            )
        reads = head is not None and head.pixels > 0
        size = pixel_size(vae.image_size)
        if reads and head.pixels != size:
            raise ValueError(
                f"the look-ahead head reads {head.pixels} pixel values a frame, but V's "
                f"{vae.image_size} px frames give {size}"
            )
        super().__init__(n, vae, rnn, params, temperature=temperature, encoder=encoder)
        self.head = head
        self.settings = settings or LookaheadSettings()
        self.column = None if head is None else head.horizon_index(self.settings.horizon)
        self.grid = self.device.send(action_grid(self.settings.grid))
        self.memory = MotionMemory(n, rnn.z_size, self.device)
        self.pixels = reads if pixels is None else bool(pixels) or reads
        self.pixel_memory = MotionMemory(n, size, CpuDevice(), np.uint8) if self.pixels else None
        self._images = None

    def reset(self, slots, seeds, episodes=None):
        super().reset(slots, seeds, episodes)
        self.memory.reset(slots)
        if self.pixel_memory is not None:
            self.pixel_memory.reset(slots)

    def act(self, sim, images=None):
        self._images = images  # for the crops (`plan`)
        return super().act(sim, images)

    def candidates(self, c_action):
        """(B, 1 + G * G, A): C's action, then the grid."""
        xp = backend.get_array_module(c_action)
        grid = xp.broadcast_to(self.grid, (len(c_action),) + self.grid.shape)
        return xp.concatenate([c_action[:, None], grid], axis=1)

    def choose(self, z, h, c, live, on_device):
        return self.plan(z, h, c, live, on_device)[0]

    def plan(self, z, h, c, live, on_device):
        """The live slots' actions (with no head, C's), their [z, motion, h] features x
        (on M's device) and, when the planner keeps them, their frames' crops (L, 3, P)
        uint8 on the host: this frame's and the two before (else None)."""
        c_action = super().choose(z, h, c, live, on_device)
        x = features(z, *self.memory.step(z, live, on_device), h)
        recent = None
        if self.pixel_memory is not None:
            p = crops(self._images[live])
            recent = np.stack([p, *self.pixel_memory.step(p, live, live)], axis=1)
        if self.head is None:
            return c_action, x, recent
        inputs = x
        if self.head.pixels:
            xp = backend.get_array_module(x)
            pixels = self.device.send(pixel_features(recent))
            inputs = xp.concatenate([x, pixels], axis=1)
        cand = self.candidates(c_action)
        risk = self.head.risk(inputs, cand, self.column)
        s = self.settings
        a, replaced = choose_actions(risk, cand, s.threshold, s.cost)
        self.count(replaced)
        return a, x, recent


def hold_failures(sim, slots, actions, horizon):
    """What holding each action does, on copies of the true state.

    Args:
        sim: `SocNavSim`; slots: (B,) its slots to branch from.
        actions: (B, K, 2) actions, each held constant from the slot's present state.
        horizon: steps to look.

    Returns:
        (B, K) int8: the step (1..horizon) at which the copy collides with a person
        or leaves the room, 0 if it does neither (reaching the goal or the time
        limit ends a copy safely).
    """
    b, k = actions.shape[:2]
    branch = sn.SocNavSim(b * k, sim.config)
    for name in ("robot", "goal", "humans", "steps"):
        getattr(branch, name)[:] = np.repeat(getattr(sim, name)[slots], k, axis=0)
    branch.active[:] = True
    held = sn.applied_actions(np.asarray(actions).reshape(b * k, -1))
    fail = np.zeros(b * k, np.int8)
    for t in range(horizon):
        running = branch.active.copy()
        branch.step(held)
        bad = (branch.outcome == sn.COLLISION) | (branch.outcome == sn.OUT_OF_MAP)
        fail[running & bad] = t + 1
    return fail.reshape(b, k)


class Recorder(LookaheadPlanner):
    """Plays C (head None) or the planner, explores, and records labelled rows.

    Args:
        n, vae, rnn, params, head, settings, encoder: as `LookaheadPlanner`; with
            head None the action is C's.
        pixels: whether the rows keep the frames' crops too (for a head with pixels).
        explore: fraction of steps whose action is uniform random instead.
        keep_safe: fraction of rows kept where no labelled action fails.
        horizon: steps the labels look ahead (the head's longest horizon).
        seed: the exploration's and the subsampling's generator.
    """

    def __init__(self, n, vae, rnn, params, head, settings, explore, keep_safe, horizon, seed,
                 encoder=None, pixels=False):  # fmt: skip
        super().__init__(n, vae, rnn, params, head, settings, encoder=encoder, pixels=pixels)
        self.explore, self.keep_safe, self.horizon = float(explore), float(keep_safe), int(horizon)
        self.rng = np.random.default_rng(seed)
        self.labelled = action_grid(LABEL_GRID)
        self.episode = np.full(n, -1)
        keys = ["x", "actions", "fail", "episode"] + (["crops"] if self.pixels else [])
        self.rows = {k: [] for k in keys}
        self.seen = 0
        # Some risky rows again, with their frames, to draw without rereading the rows.
        self.pictures = {k: [] for k in ["images"] + keys if k != "episode"}

    # Frames kept of risky rows of episodes at or after this index (held out by the script).
    picture_from = 0
    pictures_max = 24

    def reset(self, slots, seeds, episodes=None):
        super().reset(slots, seeds, episodes)
        self.episode[np.asarray(slots)] = episodes

    def act(self, sim, images=None):
        self._sim, self._images = sim, images
        return super().act(sim, images)

    def choose(self, z, h, c, live, on_device):
        a, x, recent = self.plan(z, h, c, live, on_device)
        a = to_host(a).copy()
        wild = self.rng.random(len(live)) < self.explore
        a[wild] = self.rng.uniform(-1.0, 1.0, (int(wild.sum()), a.shape[1])).astype(np.float32)
        # Labels: the grid and the action taken, held from the present true state.
        acts = np.concatenate(
            [np.broadcast_to(self.labelled, (len(live),) + self.labelled.shape), a[:, None]], 1
        )
        fail = hold_failures(self._sim, live, acts, self.horizon)
        keep = (fail > 0).any(axis=1) | (self.rng.random(len(live)) < self.keep_safe)
        self.seen += len(live)
        if keep.any():
            episode = self.episode[live][keep]
            risky = np.flatnonzero((fail[keep, : len(self.labelled)] > 0).any(axis=1))
            x_kept = to_host(x)[keep].astype(np.float16)
            kept = {"x": x_kept, "actions": acts[keep].astype(np.float32), "fail": fail[keep]}
            if recent is not None:
                kept["crops"] = recent[keep]
            for j in risky[episode[risky] >= self.picture_from]:
                if len(self.pictures["images"]) < self.pictures_max:
                    self.pictures["images"].append(self._images[live[keep][j]].copy())
                    for key, value in kept.items():
                        self.pictures[key].append(value[j])
            for key, value in kept.items():
                self.rows[key].append(value)
            self.rows["episode"].append(episode)
        return self.device.send(a)

    def data(self):
        """The kept rows: x (N, D) float16, actions (N, K, 2), fail (N, K) int8, episode
        (N,), with pixels crops (N, 3, P) uint8; and `picture_images` (P, S, S, 3) uint8
        with `picture_x`, `picture_actions`, `picture_fail` (and `picture_crops`): up to
        `pictures_max` risky rows again, with their frames."""
        out = {k: np.concatenate(v) for k, v in self.rows.items() if v}
        if not out:
            k = len(self.labelled) + 1
            out = {
                "x": np.zeros((0, 3 * self.z_size + self.hidden_size), np.float16),
                "actions": np.zeros((0, k, 2), np.float32),
                "fail": np.zeros((0, k), np.int8),
                "episode": np.zeros(0, np.int64),
            }
            if self.pixels:
                out["crops"] = np.zeros((0, 3, pixel_size(self.vae.image_size)), np.uint8)
        size = self.vae.image_size
        empty = {"images": np.zeros((0, size, size, 3), np.uint8)}
        empty.update({key: out[key][:0] for key in self.pictures if key != "images"})
        for key, rows in self.pictures.items():
            out[f"picture_{key}"] = np.stack(rows) if rows else empty[key]
        return out
