"""Baseline navigation policies, batched over the slots of a `SocNavSim`.

These are the yardstick every learned agent is reported against, and the
behaviour policies that generate V's and M's training data:

- `random`: uniform actions in [-1, 1]^2, independent each step.
- `brownian`: a random walk in action space, so the robot makes long smooth
  arcs and straight runs (V sees long motions that `random` never makes).
- `greedy`: turn towards the goal, full speed when facing it.
- `greedy_avoid`: greedy plus hand-written avoidance of people and walls.
- `oracle`: a look-ahead planner reading the true simulator state (DWA style:
  45 constant actions, people predicted at constant velocity over 1 s). It is
  the ceiling, not a fair competitor: it sees everything exactly.
- `cautious_oracle`: the oracle with a wider and heavier cost for passing close
  to people (1.5 m, not 0.9 m). It succeeds a little less often itself, but a
  linear C that imitates it collides less than one imitating the oracle
  (`make agent`'s teacher for C; docs/experiments.md).
- `mixed`: each episode runs one of random / brownian / noisy greedy_avoid,
  chosen by the episode's seed; the default data policy, so that M's reward
  and done heads see successes as well as failures.

Interface: `policy.reset(slots, seeds, episodes)` starts new episodes in those slots
(seeds drive any randomness, so an episode depends only on its seed, not on
which slot or worker runs it); `policy.act(sim, images)` returns (N, 2) float32
actions for all slots. `images` is the (N, 64, 64, 3) uint8 egocentric view,
passed only to policies with `needs_image = True`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from lib.env import socnavenv as sn

POLICY_NAMES = (
    "random",
    "brownian",
    "greedy",
    "greedy_avoid",
    "oracle",
    "cautious_oracle",
    "mixed",
)


def _policy_rng(seed: int) -> np.random.Generator:
    # A stream separate from the env's, which also seeds from `seed`.
    return np.random.default_rng([int(seed), 0x5EED])


class Policy:
    """Base class: stateless unless overridden."""

    name = "policy"
    needs_image = False

    def __init__(self, n: int):
        self.n = n

    def reset(self, slots, seeds, episodes=None) -> None:
        """Starts new episodes in `slots` ((K,) ints) with `seeds` ((K,) ints);
        `episodes` ((K,) ints) are their indices in the runner's list of seeds."""

    def act(self, sim: sn.SocNavSim, images: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError


class RandomPolicy(Policy):
    name = "random"

    def __init__(self, n: int):
        super().__init__(n)
        self.rngs = [np.random.default_rng(i) for i in range(n)]

    def reset(self, slots, seeds, episodes=None):
        for i, s in zip(slots, seeds):
            self.rngs[i] = _policy_rng(s)

    def act(self, sim, images=None):
        return np.stack([r.uniform(-1.0, 1.0, 2) for r in self.rngs]).astype(np.float32)


class BrownianPolicy(Policy):
    """a_{t+1} = clip(a_t + N(0, sigma^2)), started uniform; speed biased forward."""

    name = "brownian"

    def __init__(self, n: int, sigma: float = 0.2):
        super().__init__(n)
        self.sigma = sigma
        self.rngs = [np.random.default_rng(i) for i in range(n)]
        self.action = np.zeros((n, 2))

    def reset(self, slots, seeds, episodes=None):
        for i, s in zip(slots, seeds):
            self.rngs[i] = _policy_rng(s)
            self.action[i] = self.rngs[i].uniform(-1.0, 1.0, 2)

    def act(self, sim, images=None):
        noise = np.stack([r.normal(0.0, self.sigma, 2) for r in self.rngs])
        self.action = np.clip(self.action + noise, -1.0, 1.0)
        return self.action.astype(np.float32)


def goal_in_robot_frame(sim: sn.SocNavSim) -> tuple[np.ndarray, np.ndarray]:
    """Returns the goal's (forward, left) coordinates in metres, each (N,)."""
    dx = sim.goal[:, 0] - sim.robot[:, 0]
    dy = sim.goal[:, 1] - sim.robot[:, 1]
    c = np.cos(sim.robot[:, 2])
    s = np.sin(sim.robot[:, 2])
    return c * dx + s * dy, -s * dx + c * dy


def steer_towards(angle: np.ndarray, dt: float, facing: float = 0.3) -> np.ndarray:
    """Actions that turn by `angle` (rad, (N,), positive = left) as fast as the
    robot can, moving at full speed once within `facing` rad of it."""
    rot = np.clip(angle / (sn.MAX_ROTATION * dt), -1.0, 1.0)
    adv = np.where(np.abs(angle) < facing, 1.0, -1.0)
    return np.stack([adv, rot], axis=1).astype(np.float32)


class GreedyPolicy(Policy):
    name = "greedy"

    def act(self, sim, images=None):
        fx, ly = goal_in_robot_frame(sim)
        return steer_towards(np.arctan2(ly, fx), sim.config.timestep)


@njit(cache=True)
def _avoid_kernel(robot, goal, humans, half, out):
    """Hand-written rules: goal attraction, repulsion from people's predicted
    positions and from walls, and a stop when someone is close in front."""
    n = robot.shape[0]
    for i in range(n):
        x = robot[i, 0]
        y = robot[i, 1]
        th = robot[i, 2]
        gx = goal[i, 0] - x
        gy = goal[i, 1] - y
        gd = math.sqrt(gx * gx + gy * gy) + 1e-9
        fx = gx / gd
        fy = gy / gd
        stop = False
        for j in range(humans.shape[1]):
            # Where the person will be in 0.5 s.
            px = humans[i, j, 0] + 0.5 * humans[i, j, 3] * math.cos(humans[i, j, 2])
            py = humans[i, j, 1] + 0.5 * humans[i, j, 3] * math.sin(humans[i, j, 2])
            for qx, qy in ((humans[i, j, 0], humans[i, j, 1]), (px, py)):
                dx = x - qx
                dy = y - qy
                d = math.sqrt(dx * dx + dy * dy) + 1e-9
                if d < 1.6:
                    w = 1.5 * (1.6 - d) / (d - 0.3 if d > 0.35 else 0.05)
                    fx += w * dx / d
                    fy += w * dy / d
                # In front (within 50 degrees) and close: wait for them to pass.
                bearing = math.atan2(-dy, -dx) - th
                bearing = (bearing + math.pi) % (2 * math.pi) - math.pi
                if d < 0.75 and abs(bearing) < 0.9:
                    stop = True
        lim = half - 0.6
        if x > lim:
            fx -= 2.0 * (x - lim)
        if x < -lim:
            fx += 2.0 * (-lim - x)
        if y > lim:
            fy -= 2.0 * (y - lim)
        if y < -lim:
            fy += 2.0 * (-lim - y)
        ang = math.atan2(fy, fx) - th
        ang = (ang + math.pi) % (2 * math.pi) - math.pi
        rot = min(max(ang / (sn.MAX_ROTATION * 0.1), -1.0), 1.0)
        if stop or abs(ang) > 0.5:
            adv = -1.0
        else:
            adv = 1.0 - 2.0 * abs(ang) / 0.5 * 0.5
        out[i, 0] = adv
        out[i, 1] = rot


class GreedyAvoidPolicy(Policy):
    name = "greedy_avoid"

    def act(self, sim, images=None):
        out = np.empty((sim.n, 2))
        _avoid_kernel(sim.robot, sim.goal, sim.humans, sim.config.half, out)
        return out.astype(np.float32)


# Oracle: 5 speeds x 9 turn rates, each held for HORIZON steps.
_ORACLE_ADV = np.linspace(-1.0, 1.0, 5)
_ORACLE_ROT = np.linspace(-1.0, 1.0, 9)
ORACLE_ACTIONS = np.array([[a, r] for a in _ORACLE_ADV for r in _ORACLE_ROT])  # (45, 2)


# The oracle's safety terms: (margin, clearance, clearance weight). A candidate dies where
# it comes within COLLISION_DISTANCE + margin of a person's predicted position, and pays
# weight * (clearance - d)^2 per step within clearance (more for nearer steps).
ORACLE_SAFETY = (0.12, 0.9, 2.0)
CAUTIOUS_SAFETY = (0.12, 1.5, 30.0)


@njit(cache=True)
def _oracle_kernel(
    robot, goal, humans, active, half, dt, candidates, horizon, out, margin, clearance, weight
):
    """Scores every candidate action by simulating `horizon` steps ahead."""
    n = robot.shape[0]
    n_c = candidates.shape[0]
    n_h = humans.shape[1]
    wall = half - sn.ROBOT_RADIUS - 0.1
    for i in range(n):
        out[i, 0] = -1.0
        out[i, 1] = 0.0
        if not active[i]:
            continue
        d0 = math.sqrt((robot[i, 0] - goal[i, 0]) ** 2 + (robot[i, 1] - goal[i, 1]) ** 2)
        best = -1e18
        for k in range(n_c):
            v = (candidates[k, 0] + 1.0) * 0.5 * sn.MAX_ADVANCE
            w = candidates[k, 1] * sn.MAX_ROTATION
            x = robot[i, 0]
            y = robot[i, 1]
            th = robot[i, 2]
            score = 0.0
            dead = False
            reached = False
            for t in range(1, horizon + 1):
                x += v * math.cos(th) * dt
                y += v * math.sin(th) * dt
                th += w * dt
                if abs(x) > wall or abs(y) > wall:
                    score -= 1000.0 * (horizon + 1 - t)
                    dead = True
                    break
                for j in range(n_h):
                    hx = humans[i, j, 0] + humans[i, j, 3] * math.cos(humans[i, j, 2]) * dt * t
                    hy = humans[i, j, 1] + humans[i, j, 3] * math.sin(humans[i, j, 2]) * dt * t
                    d = math.sqrt((x - hx) ** 2 + (y - hy) ** 2)
                    if d < sn.COLLISION_DISTANCE + margin:
                        score -= 1000.0 * (horizon + 1 - t)
                        dead = True
                        break
                    if d < clearance:
                        # Clearance cost, heavier for near-term predictions.
                        score -= weight * (clearance - d) ** 2 * (horizon + 1 - t) / horizon
                if dead:
                    break
                dg = math.sqrt((x - goal[i, 0]) ** 2 + (y - goal[i, 1]) ** 2)
                if dg < sn.GOAL_THRESHOLD - 0.05:
                    score += 100.0 * (horizon + 1 - t)
                    reached = True
                    break
            if not dead and not reached:
                dg = math.sqrt((x - goal[i, 0]) ** 2 + (y - goal[i, 1]) ** 2)
                score += 3.0 * (d0 - dg)
                ang = math.atan2(goal[i, 1] - y, goal[i, 0] - x) - th
                ang = (ang + math.pi) % (2 * math.pi) - math.pi
                score -= 0.4 * abs(ang)
            if score > best:
                best = score
                out[i, 0] = candidates[k, 0]
                out[i, 1] = candidates[k, 1]


class OraclePolicy(Policy):
    """Look-ahead planner on the true state; the ceiling reference."""

    name = "oracle"
    safety = ORACLE_SAFETY

    def __init__(self, n: int, horizon: int = 10):
        super().__init__(n)
        self.horizon = horizon

    def act(self, sim, images=None):
        out = np.empty((sim.n, 2))
        _oracle_kernel(
            sim.robot,
            sim.goal,
            sim.humans,
            sim.active,
            sim.config.half,
            sim.config.timestep,
            ORACLE_ACTIONS,
            self.horizon,
            out,
            *self.safety,
        )
        return out.astype(np.float32)


class CautiousOraclePolicy(OraclePolicy):
    """The oracle with `CAUTIOUS_SAFETY`: a teacher a linear C imitates more safely."""

    name = "cautious_oracle"
    safety = CAUTIOUS_SAFETY


class MixedPolicy(Policy):
    """Per episode: random (25 %), brownian (35 %) or greedy_avoid with
    Brownian action noise (40 %), chosen from the episode's seed."""

    name = "mixed"
    WEIGHTS = (0.25, 0.35, 0.40)

    def __init__(self, n: int):
        super().__init__(n)
        self.random = RandomPolicy(n)
        self.brownian = BrownianPolicy(n)
        self.noise = BrownianPolicy(n, sigma=0.15)
        self.avoid = GreedyAvoidPolicy(n)
        self.choice = np.zeros(n, np.int64)

    def reset(self, slots, seeds, episodes=None):
        slots = np.asarray(slots)
        seeds = np.asarray(seeds, np.int64)
        for i, s in zip(slots, seeds):
            u = np.random.default_rng([int(s), 0xC401CE]).random()
            self.choice[i] = int(np.searchsorted(np.cumsum(self.WEIGHTS), u))
        self.random.reset(slots, seeds)
        self.brownian.reset(slots, seeds)
        self.noise.reset(slots, seeds)
        self.noise.action[slots] *= 0.3

    def act(self, sim, images=None):
        out = self.random.act(sim)
        b = self.brownian.act(sim)
        g = np.clip(self.avoid.act(sim) + 0.5 * self.noise.act(sim), -1.0, 1.0)
        out[self.choice == 1] = b[self.choice == 1]
        out[self.choice == 2] = g[self.choice == 2]
        return out


_POLICIES = {
    "random": RandomPolicy,
    "brownian": BrownianPolicy,
    "greedy": GreedyPolicy,
    "greedy_avoid": GreedyAvoidPolicy,
    "oracle": OraclePolicy,
    "cautious_oracle": CautiousOraclePolicy,
    "mixed": MixedPolicy,
}


def make_policy(name: str, n: int) -> Policy:
    """Builds the baseline policy called `name` for `n` lockstep slots."""
    if name not in _POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
    return _POLICIES[name](n)
