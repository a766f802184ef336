"""SocNavEnv: a robot crossing a room of walking people to reach a goal.

A Gymnasium reimplementation of the 2022 SocNavEnv (robocomp gsoc22-socnavenv)
that the original World Models on SocNavEnv work used, with its bugs fixed (see
`SocNavEnv`'s docstring). The simulation is batched and compiled with numba:
`SocNavSim` holds one state array for N environments, `_step_kernel` steps all
of them and `_render_kernel` draws all of them. `SocNavEnv` (Gymnasium, N = 1)
and `SocNavVectorEnv` (Gymnasium vector env, N > 1) are views of that one core,
so the dynamics exist once.

It imports only NumPy, numba, Gymnasium and the standard library, so another project
can use it without this repository's pipeline (see `socnavenv/__init__.py`). The
pipeline reaches this same module object as `lib.env.socnavenv`.

Importing this module registers `SocNavEnv-v0` with Gymnasium.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from numba import njit

# ---------------------------------------------------------------------------
# Defaults of the 2022 environment (units in comments).
# ---------------------------------------------------------------------------
MAP_SIZE = 8.0  # m, side of the square room centred on the origin
MARGIN = 0.5  # m, nothing spawns closer than this to a wall
N_HUMANS = 5
TIMESTEP = 0.1  # s
MAX_STEPS = 250  # steps, then the episode is truncated (timeout)
ROBOT_RADIUS = 0.15  # m
HUMAN_RADIUS = 0.25  # m, so a collision is a centre distance below 0.4 m
GOAL_RADIUS = 0.5  # m; reached when the robot's centre is within 0.65 m
COLLISION_DISTANCE = ROBOT_RADIUS + HUMAN_RADIUS  # m, centre to centre
GOAL_THRESHOLD = ROBOT_RADIUS + GOAL_RADIUS  # m, centre to centre
MAX_ADVANCE = 1.4  # m/s, robot speed at action[0] = +1 (action[0] = -1 stops)
MAX_ROTATION = 0.5 * math.pi  # rad/s at action[1] = ±1, positive turns left (CCW)
MAX_HUMAN_SPEED = 1.4  # m/s, humans walk straight at U(0, this)
START_CLEARANCE = 1.0  # m, no human this close to the robot at reset
MIN_GOAL_DISTANCE = 1.5  # m, goal at least this far from the robot at reset
PERSONAL_SPACE = 0.45  # m, centre distance used by the social metrics

REACH_REWARD = 1.0
COLLISION_REWARD = -1.0
OUTOFMAP_REWARD = -0.5
TIMEOUT_REWARD = -0.5
DISTANCE_REWARD_DIVISOR = 1000.0  # per step: -distance_to_goal / this ...
ALIVE_REWARD = -1e-5  # ... plus this

# Outcome codes, as stored in SocNavSim.outcome; OUTCOMES[code] is the name.
RUNNING, SUCCESS, COLLISION, OUT_OF_MAP, TIMEOUT = 0, 1, 2, 3, 4
OUTCOMES = ("running", "success", "collision", "out_of_map", "timeout")

# Drawing (RGB). Humans are drawn at their physical size; the robot slightly
# larger than physical so it stays visible at 64 x 64.
FLOOR_RGB = (238.0, 238.0, 232.0)
WALL_RGB = (40.0, 40.0, 40.0)
OUTSIDE_RGB = (120.0, 120.0, 128.0)
GOAL_RGB = (30.0, 190.0, 60.0)
HUMAN_RGB = (220.0, 50.0, 40.0)
HUMAN_TICK_RGB = (90.0, 0.0, 0.0)
ROBOT_RGB = (40.0, 90.0, 235.0)
ROBOT_TICK_RGB = (0.0, 0.0, 80.0)
WALL_WIDTH = 0.15  # m, drawn just outside the room
ROBOT_DRAW_RADIUS = 0.25  # m (physical 0.15 m; drawn larger to stay visible at 64 px)
ROBOT_TICK_LENGTH = 0.5  # m from the centre; drawn under the body, so only the nose shows
TICK_LENGTH = 0.42  # m from the centre, so the tick sticks out of the body
TICK_HALF_WIDTH = 0.05  # m
SUPERSAMPLE = 4  # 4 x 4 samples per edge pixel


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Everything that defines an episode's dynamics and its images.

    Saved in every data manifest, so later steps can check compatibility.
    """

    n_humans: int = N_HUMANS
    max_steps: int = MAX_STEPS
    map_size: float = MAP_SIZE  # m
    timestep: float = TIMESTEP  # s
    image_size: int = 64  # px, side of the egocentric observation
    view_size: float = 8.0  # m, side of the square the egocentric view covers
    render_size: int = 256  # px, side of the global view (render_mode="rgb_array")

    def __post_init__(self):
        if self.n_humans < 0:
            raise ValueError(f"n_humans must be >= 0, got {self.n_humans}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.image_size < 8 or self.render_size < 8:
            raise ValueError("image_size and render_size must be >= 8 px")
        if self.view_size <= 0 or self.map_size <= 2 * MARGIN:
            raise ValueError("view_size must be > 0 and map_size > 2 * margin")

    @property
    def half(self) -> float:
        return 0.5 * self.map_size

    @property
    def vector_size(self) -> int:
        return 6 + 5 * self.n_humans

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------
# Kernels. All state is float64; one call handles all N environments.
# ---------------------------------------------------------------------------
@njit(cache=True)
def _wrap_angle(a):
    return (a + math.pi) % (2.0 * math.pi) - math.pi


@njit(cache=True)
def _step_kernel(
    robot,
    goal,
    humans,
    steps,
    active,
    actions,
    half,
    dt,
    max_steps,
    reward,
    outcome,
    min_dist,
    path,
):
    """Advances every active environment by one step, in place.

    Args:
        robot: (N, 3) float64, x, y (m), heading (rad).
        goal: (N, 2) float64, x, y (m).
        humans: (N, H, 4) float64, x, y (m), heading (rad), speed (m/s).
        steps: (N,) int64, steps taken in the episode.
        active: (N,) bool; inactive environments are left alone.
        actions: (N, 2) float, clipped to [-1, 1].
        half: half of the room's side (m).
        dt: time step (s).
        max_steps: steps before truncation.
        reward, outcome, min_dist, path: (N,) outputs: reward, outcome code,
            closest centre distance to any human during the step (m), and the
            distance the robot moved (m). Inactive entries get 0 / RUNNING /
            inf / 0.
    """
    n = robot.shape[0]
    n_h = humans.shape[1]
    wall = half - HUMAN_RADIUS
    for i in range(n):
        if not active[i]:
            reward[i] = 0.0
            outcome[i] = RUNNING
            min_dist[i] = np.inf
            path[i] = 0.0
            continue
        a0 = min(max(actions[i, 0], -1.0), 1.0)
        a1 = min(max(actions[i, 1], -1.0), 1.0)
        if math.isnan(a0):  # NaN actions mean "stand still"
            a0 = -1.0
        if math.isnan(a1):
            a1 = 0.0
        speed = (a0 + 1.0) * 0.5 * MAX_ADVANCE
        x0 = robot[i, 0]
        y0 = robot[i, 1]
        th = robot[i, 2]
        dx = speed * math.cos(th) * dt
        dy = speed * math.sin(th) * dt
        x1 = x0 + dx
        y1 = y0 + dy
        robot[i, 0] = x1
        robot[i, 1] = y1
        robot[i, 2] = _wrap_angle(th + a1 * MAX_ROTATION * dt)
        path[i] = speed * dt

        # Humans walk straight and bounce off the walls. Collision uses the
        # closest approach of the two straight segments during the step, so a
        # fast robot cannot pass through a person between two samples.
        dmin = np.inf
        for j in range(n_h):
            hx = humans[i, j, 0]
            hy = humans[i, j, 1]
            hth = humans[i, j, 2]
            hv = humans[i, j, 3]
            hdx = hv * math.cos(hth) * dt
            hdy = hv * math.sin(hth) * dt
            rx = x0 - hx
            ry = y0 - hy
            ux = dx - hdx
            uy = dy - hdy
            uu = ux * ux + uy * uy
            t = 0.0
            if uu > 0.0:
                t = min(max(-(rx * ux + ry * uy) / uu, 0.0), 1.0)
            d = math.sqrt((rx + t * ux) ** 2 + (ry + t * uy) ** 2)
            dmin = min(dmin, d)
            nx = hx + hdx
            ny = hy + hdy
            if nx > wall:
                nx = 2.0 * wall - nx
                hth = math.pi - hth
            elif nx < -wall:
                nx = -2.0 * wall - nx
                hth = math.pi - hth
            if ny > wall:
                ny = 2.0 * wall - ny
                hth = -hth
            elif ny < -wall:
                ny = -2.0 * wall - ny
                hth = -hth
            humans[i, j, 0] = nx
            humans[i, j, 1] = ny
            humans[i, j, 2] = _wrap_angle(hth)
        min_dist[i] = dmin

        steps[i] += 1
        dist_goal = math.sqrt((x1 - goal[i, 0]) ** 2 + (y1 - goal[i, 1]) ** 2)
        # Failures win over success on the same step.
        if dmin < COLLISION_DISTANCE:
            outcome[i] = COLLISION
            reward[i] = COLLISION_REWARD
        elif abs(x1) > half or abs(y1) > half:
            outcome[i] = OUT_OF_MAP
            reward[i] = OUTOFMAP_REWARD
        elif dist_goal < GOAL_THRESHOLD:
            outcome[i] = SUCCESS
            reward[i] = REACH_REWARD
        elif steps[i] >= max_steps:
            outcome[i] = TIMEOUT
            reward[i] = TIMEOUT_REWARD
        else:
            outcome[i] = RUNNING
            reward[i] = -dist_goal / DISTANCE_REWARD_DIVISOR + ALIVE_REWARD
        if outcome[i] != RUNNING:
            active[i] = False


@njit(cache=True)
def _vector_kernel(robot, goal, humans, out):
    """Writes the 2022 env's vector observation (robot frame) into `out`.

    Layout per env, 6 + 5 H floats: robot x, y (m, world), sin, cos of its
    heading; goal x, y in the robot frame (x forward, y left); then per human
    x, y in the robot frame, sin, cos of its heading relative to the robot's,
    and its speed (m/s).
    """
    n = robot.shape[0]
    n_h = humans.shape[1]
    for i in range(n):
        x = robot[i, 0]
        y = robot[i, 1]
        c = math.cos(robot[i, 2])
        s = math.sin(robot[i, 2])
        out[i, 0] = x
        out[i, 1] = y
        out[i, 2] = s
        out[i, 3] = c
        gx = goal[i, 0] - x
        gy = goal[i, 1] - y
        out[i, 4] = c * gx + s * gy
        out[i, 5] = -s * gx + c * gy
        for j in range(n_h):
            hx = humans[i, j, 0] - x
            hy = humans[i, j, 1] - y
            rel = humans[i, j, 2] - robot[i, 2]
            k = 6 + 5 * j
            out[i, k] = c * hx + s * hy
            out[i, k + 1] = -s * hx + c * hy
            out[i, k + 2] = math.sin(rel)
            out[i, k + 3] = math.cos(rel)
            out[i, k + 4] = humans[i, j, 3]


@njit(cache=True)
def _blend(buf, r, c, cov, rgb):
    k = 1.0 - cov
    buf[r, c, 0] = buf[r, c, 0] * k + rgb[0] * cov
    buf[r, c, 1] = buf[r, c, 1] * k + rgb[1] * cov
    buf[r, c, 2] = buf[r, c, 2] * k + rgb[2] * cov


@njit(cache=True)
def _draw_disc(buf, pc, pr, rad, rgb):
    """Anti-aliased disc; centre (pc, pr) and radius in pixels (continuous)."""
    hgt = buf.shape[0]
    wid = buf.shape[1]
    inner = rad - 0.7072
    outer = rad + 0.7072
    c0 = max(math.floor(pc - outer), 0)
    c1 = min(math.ceil(pc + outer), wid - 1)
    r0 = max(math.floor(pr - outer), 0)
    r1 = min(math.ceil(pr + outer), hgt - 1)
    inv = 1.0 / SUPERSAMPLE
    for r in range(r0, r1 + 1):
        for c in range(c0, c1 + 1):
            d = math.sqrt((c + 0.5 - pc) ** 2 + (r + 0.5 - pr) ** 2)
            if d >= outer:
                continue
            if d <= inner:
                cov = 1.0
            else:
                hits = 0
                for a in range(SUPERSAMPLE):
                    for b in range(SUPERSAMPLE):
                        sx = c + (b + 0.5) * inv - pc
                        sy = r + (a + 0.5) * inv - pr
                        if sx * sx + sy * sy <= rad * rad:
                            hits += 1
                cov = hits * inv * inv
            if cov > 0.0:
                _blend(buf, r, c, cov, rgb)


@njit(cache=True)
def _segment_distance(px, py, ax, ay, bx, by):
    ux = bx - ax
    uy = by - ay
    uu = ux * ux + uy * uy
    t = 0.0
    if uu > 0.0:
        t = min(max(((px - ax) * ux + (py - ay) * uy) / uu, 0.0), 1.0)
    return math.sqrt((px - ax - t * ux) ** 2 + (py - ay - t * uy) ** 2)


@njit(cache=True)
def _draw_segment(buf, ac, ar, bc, br, hw, rgb):
    """Anti-aliased thick segment (capsule) from (ac, ar) to (bc, br), pixels."""
    hgt = buf.shape[0]
    wid = buf.shape[1]
    inner = hw - 0.7072
    outer = hw + 0.7072
    c0 = max(math.floor(min(ac, bc) - outer), 0)
    c1 = min(math.ceil(max(ac, bc) + outer), wid - 1)
    r0 = max(math.floor(min(ar, br) - outer), 0)
    r1 = min(math.ceil(max(ar, br) + outer), hgt - 1)
    inv = 1.0 / SUPERSAMPLE
    for r in range(r0, r1 + 1):
        for c in range(c0, c1 + 1):
            d = _segment_distance(c + 0.5, r + 0.5, ac, ar, bc, br)
            if d >= outer:
                continue
            if d <= inner:
                cov = 1.0
            else:
                hits = 0
                for a in range(SUPERSAMPLE):
                    for b in range(SUPERSAMPLE):
                        sd = _segment_distance(
                            c + (b + 0.5) * inv, r + (a + 0.5) * inv, ac, ar, bc, br
                        )
                        if sd <= hw:
                            hits += 1
                cov = hits * inv * inv
            if cov > 0.0:
                _blend(buf, r, c, cov, rgb)


@njit(cache=True)
def _room_class(wx, wy, half):
    """0 floor, 1 wall, 2 outside, for a world point."""
    sd = max(abs(wx), abs(wy)) - half
    if sd <= 0.0:
        return 0
    if sd <= WALL_WIDTH:
        return 1
    return 2


@njit(cache=True)
def _draw_room(buf, cx, cy, cs, sn, mpp, half):
    """Fills the frame with floor, wall and outside, supersampling only pixels
    that straddle a boundary."""
    hgt = buf.shape[0]
    wid = buf.shape[1]
    hd = 0.7072 * mpp
    inv = 1.0 / SUPERSAMPLE
    for r in range(hgt):
        for c in range(wid):
            a = (c + 0.5 - 0.5 * wid) * mpp
            b = (0.5 * hgt - r - 0.5) * mpp
            wx = cx + cs * a - sn * b
            wy = cy + sn * a + cs * b
            sd = max(abs(wx), abs(wy)) - half
            if sd < -hd:
                cls = 0
            elif sd > WALL_WIDTH + hd:
                cls = 2
            elif hd < sd < WALL_WIDTH - hd:
                cls = 1
            else:
                cls = -1
            if cls == 0:
                buf[r, c, 0] = FLOOR_RGB[0]
                buf[r, c, 1] = FLOOR_RGB[1]
                buf[r, c, 2] = FLOOR_RGB[2]
            elif cls == 1:
                buf[r, c, 0] = WALL_RGB[0]
                buf[r, c, 1] = WALL_RGB[1]
                buf[r, c, 2] = WALL_RGB[2]
            elif cls == 2:
                buf[r, c, 0] = OUTSIDE_RGB[0]
                buf[r, c, 1] = OUTSIDE_RGB[1]
                buf[r, c, 2] = OUTSIDE_RGB[2]
            else:
                acc0 = 0.0
                acc1 = 0.0
                acc2 = 0.0
                for p in range(SUPERSAMPLE):
                    for q in range(SUPERSAMPLE):
                        sa = (c + (q + 0.5) * inv - 0.5 * wid) * mpp
                        sb = (0.5 * hgt - r - (p + 0.5) * inv) * mpp
                        k = _room_class(cx + cs * sa - sn * sb, cy + sn * sa + cs * sb, half)
                        if k == 0:
                            acc0 += FLOOR_RGB[0]
                            acc1 += FLOOR_RGB[1]
                            acc2 += FLOOR_RGB[2]
                        elif k == 1:
                            acc0 += WALL_RGB[0]
                            acc1 += WALL_RGB[1]
                            acc2 += WALL_RGB[2]
                        else:
                            acc0 += OUTSIDE_RGB[0]
                            acc1 += OUTSIDE_RGB[1]
                            acc2 += OUTSIDE_RGB[2]
                w = inv * inv
                buf[r, c, 0] = acc0 * w
                buf[r, c, 1] = acc1 * w
                buf[r, c, 2] = acc2 * w


@njit(cache=True)
def _render_kernel(robot, goal, humans, egocentric, view_size, half, out):
    """Draws N frames into `out`.

    Args:
        robot: (N, 3) float64; goal: (N, 2) float64; humans: (N, H, 4) float64.
        egocentric: if True the view is centred on the robot, heading up, and
            covers `view_size` metres; otherwise it is the whole room, north up,
            with a little of the outside visible.
        view_size: side of the egocentric view (m).
        half: half of the room's side (m).
        out: (N, S, S, 3) uint8 output.
    """
    n = out.shape[0]
    hgt = out.shape[1]
    wid = out.shape[2]
    buf = np.empty((hgt, wid, 3), np.float64)
    for i in range(n):
        if egocentric:
            cx = robot[i, 0]
            cy = robot[i, 1]
            phi = robot[i, 2] - 0.5 * math.pi
            mpp = view_size / wid
        else:
            cx = 0.0
            cy = 0.0
            phi = 0.0
            mpp = 2.0 * (half + 0.4) / wid
        cs = math.cos(phi)
        sn = math.sin(phi)
        _draw_room(buf, cx, cy, cs, sn, mpp, half)

        # Goal, or a marker on the view's edge pointing to it.
        dx = goal[i, 0] - cx
        dy = goal[i, 1] - cy
        gc = 0.5 * wid + (cs * dx + sn * dy) / mpp
        gr = 0.5 * hgt - (-sn * dx + cs * dy) / mpp
        grad = GOAL_RADIUS / mpp
        ox = max(max(-gc, gc - wid), 0.0)
        oy = max(max(-gr, gr - hgt), 0.0)
        if ox * ox + oy * oy < grad * grad:
            _draw_disc(buf, gc, gr, grad, GOAL_RGB)
        else:
            mrad = max(0.045 * wid, 1.5)
            vx = gc - 0.5 * wid
            vy = gr - 0.5 * hgt
            t = 1e9
            if abs(vx) > 1e-9:
                t = min(t, (0.5 * wid - mrad) / abs(vx))
            if abs(vy) > 1e-9:
                t = min(t, (0.5 * hgt - mrad) / abs(vy))
            _draw_disc(buf, 0.5 * wid + t * vx, 0.5 * hgt + t * vy, mrad, GOAL_RGB)

        tick_hw = max(TICK_HALF_WIDTH / mpp, 0.45)
        for j in range(humans.shape[1]):
            dx = humans[i, j, 0] - cx
            dy = humans[i, j, 1] - cy
            hc = 0.5 * wid + (cs * dx + sn * dy) / mpp
            hr = 0.5 * hgt - (-sn * dx + cs * dy) / mpp
            _draw_disc(buf, hc, hr, HUMAN_RADIUS / mpp, HUMAN_RGB)
            rel = humans[i, j, 2] - phi
            tl = TICK_LENGTH / mpp
            _draw_segment(
                buf,
                hc,
                hr,
                hc + tl * math.cos(rel),
                hr - tl * math.sin(rel),
                tick_hw,
                HUMAN_TICK_RGB,
            )

        dx = robot[i, 0] - cx
        dy = robot[i, 1] - cy
        rc = 0.5 * wid + (cs * dx + sn * dy) / mpp
        rr = 0.5 * hgt - (-sn * dx + cs * dy) / mpp
        rel = robot[i, 2] - phi
        tl = max(ROBOT_TICK_LENGTH / mpp, 3.0)
        _draw_segment(
            buf, rc, rr, rc + tl * math.cos(rel), rr - tl * math.sin(rel), tick_hw, ROBOT_TICK_RGB
        )
        _draw_disc(buf, rc, rr, max(ROBOT_DRAW_RADIUS / mpp, 1.8), ROBOT_RGB)

        for r in range(hgt):
            for c in range(wid):
                for k in range(3):
                    out[i, r, c, k] = np.uint8(min(max(buf[r, c, k] + 0.5, 0.0), 255.0))


def applied_actions(actions: np.ndarray) -> np.ndarray:
    """The actions the step kernel actually applies: clipped to [-1, 1], a NaN
    advance as -1 (stand still) and a NaN rotation as 0.

    Args:
        actions: (N, 2) float.

    Returns:
        (N, 2) float32.
    """
    a = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
    a[:, 0] = np.where(np.isnan(a[:, 0]), -1.0, a[:, 0])
    a[:, 1] = np.where(np.isnan(a[:, 1]), 0.0, a[:, 1])
    return a.astype(np.float32)


# ---------------------------------------------------------------------------
# The batched core.
# ---------------------------------------------------------------------------
def sample_initial_state(rng: np.random.Generator, config: EnvConfig):
    """Draws one episode's start: robot, goal and humans.

    All randomness comes from `rng`, in a fixed order, so an episode depends
    only on the generator's seed.

    Returns:
        robot (3,) float64 [x, y, heading]; goal (2,) float64; humans (H, 4)
        float64 [x, y, heading, speed].
    """
    lim = config.half - MARGIN
    robot = np.array([rng.uniform(-lim, lim), rng.uniform(-lim, lim), rng.uniform(-np.pi, np.pi)])
    while True:
        goal = rng.uniform(-lim, lim, size=2)
        if math.hypot(goal[0] - robot[0], goal[1] - robot[1]) >= MIN_GOAL_DISTANCE:
            break
    humans = np.empty((config.n_humans, 4))
    for j in range(config.n_humans):
        while True:
            pos = rng.uniform(-lim, lim, size=2)
            if math.hypot(pos[0] - robot[0], pos[1] - robot[1]) >= START_CLEARANCE:
                break
        humans[j, :2] = pos
        humans[j, 2] = rng.uniform(-np.pi, np.pi)
        humans[j, 3] = rng.uniform(0.0, MAX_HUMAN_SPEED)
    return robot, goal, humans


class SocNavSim:
    """N SocNavEnv episodes stepped in lockstep by one numba kernel.

    The state is public and meant to be read (by policies, the evaluator, the
    planner): `robot` (N, 3), `goal` (N, 2), `humans` (N, H, 4), `steps` (N,),
    `active` (N,) bool. After `step`, `reward`, `outcome`, `min_dist` and `path`
    (all (N,)) describe what happened in that step.
    """

    def __init__(self, n: int, config: EnvConfig | None = None):
        if n < 1:
            raise ValueError(f"need at least one environment, got {n}")
        self.config = config or EnvConfig()
        self.n = n
        h = self.config.n_humans
        self.robot = np.zeros((n, 3))
        self.goal = np.zeros((n, 2))
        self.humans = np.zeros((n, h, 4))
        self.steps = np.zeros(n, np.int64)
        self.active = np.zeros(n, bool)
        self.reward = np.zeros(n)
        self.outcome = np.zeros(n, np.int8)
        self.min_dist = np.full(n, np.inf)
        self.path = np.zeros(n)

    def reset_slot(self, i: int, rng: np.random.Generator) -> None:
        """Starts a new episode in slot `i`, drawn from `rng`."""
        robot, goal, humans = sample_initial_state(rng, self.config)
        self.robot[i] = robot
        self.goal[i] = goal
        self.humans[i] = humans
        self.steps[i] = 0
        self.active[i] = True
        self.reward[i] = 0.0
        self.outcome[i] = RUNNING
        self.min_dist[i] = np.inf
        self.path[i] = 0.0

    def reset_seeds(self, seeds) -> None:
        """Starts episode `seeds[i]` in every slot i (seeds: (N,) ints)."""
        if len(seeds) != self.n:
            raise ValueError(f"need {self.n} seeds, got {len(seeds)}")
        for i, s in enumerate(seeds):
            self.reset_slot(i, np.random.default_rng(int(s)))

    def step(self, actions: np.ndarray) -> None:
        """Steps all active slots with `actions` (N, 2) in [-1, 1]."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.n, 2):
            raise ValueError(f"actions must have shape ({self.n}, 2), got {actions.shape}")
        _step_kernel(
            self.robot,
            self.goal,
            self.humans,
            self.steps,
            self.active,
            actions,
            self.config.half,
            self.config.timestep,
            self.config.max_steps,
            self.reward,
            self.outcome,
            self.min_dist,
            self.path,
        )

    def distance_to_goal(self) -> np.ndarray:
        """(N,) float64, robot centre to goal centre (m)."""
        return np.hypot(self.robot[:, 0] - self.goal[:, 0], self.robot[:, 1] - self.goal[:, 1])

    def observe_images(self, out: np.ndarray | None = None) -> np.ndarray:
        """Egocentric views of all slots.

        Returns:
            (N, S, S, 3) uint8, S = config.image_size; the robot at the centre
            facing up.
        """
        s = self.config.image_size
        if out is None:
            out = np.empty((self.n, s, s, 3), np.uint8)
        _render_kernel(
            self.robot, self.goal, self.humans, True, self.config.view_size, self.config.half, out
        )
        return out

    def observe_vectors(self, out: np.ndarray | None = None) -> np.ndarray:
        """(N, 6 + 5 H) float32 vector observations (see `_vector_kernel`)."""
        buf = np.empty((self.n, self.config.vector_size))
        _vector_kernel(self.robot, self.goal, self.humans, buf)
        if out is None:
            return buf.astype(np.float32)
        out[...] = buf
        return out

    def render_global(self, size: int | None = None) -> np.ndarray:
        """(N, size, size, 3) uint8 top-down views of the whole room, north up."""
        size = size or self.config.render_size
        out = np.empty((self.n, size, size, 3), np.uint8)
        _render_kernel(
            self.robot, self.goal, self.humans, False, self.config.view_size, self.config.half, out
        )
        return out


# ---------------------------------------------------------------------------
# Gymnasium views of the core.
# ---------------------------------------------------------------------------
def _observation_space(config: EnvConfig, obs_type: str) -> spaces.Box:
    if obs_type == "image":
        s = config.image_size
        return spaces.Box(0, 255, (s, s, 3), np.uint8)
    reach = 2.0 * config.map_size  # any relative coordinate is within this
    low = [-reach, -reach, -1.0, -1.0, -reach, -reach]
    high = [reach, reach, 1.0, 1.0, reach, reach]
    low += [-reach, -reach, -1.0, -1.0, 0.0] * config.n_humans
    high += [reach, reach, 1.0, 1.0, MAX_HUMAN_SPEED] * config.n_humans
    return spaces.Box(np.array(low, np.float32), np.array(high, np.float32), dtype=np.float32)


def _env_config(obs_type, render_mode, n_humans, max_steps, view_size, image_size, render_size):
    """Checks the Gymnasium envs' keyword arguments and builds their EnvConfig."""
    if obs_type not in ("image", "vector"):
        raise ValueError(f'obs_type must be "image" or "vector", got {obs_type!r}')
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f'render_mode must be None or "rgb_array", got {render_mode!r}')
    return EnvConfig(
        n_humans=n_humans,
        max_steps=max_steps,
        view_size=view_size,
        image_size=image_size,
        render_size=render_size,
    )


class SocNavEnv(gym.Env):
    """A robot crossing a room of walking people to reach a goal.

    ## Description

    A differential-drive robot starts somewhere in an 8 m x 8 m room with five
    people who walk in straight lines at constant speed and bounce off the
    walls. It must reach a goal disc without touching anyone and without
    leaving the room. This is the 2022 SocNavEnv (robocomp gsoc22-socnavenv),
    with these fixes: the Gymnasium API; collision by closest approach during
    the step; humans bounce instead of leaving forever; a clear start (no human
    within 1 m, the goal at least 1.5 m away, random heading); actions clipped,
    never mirrored; timeout after exactly `max_steps` steps; an `outcome` in
    `info` on the last step.

    ## Action Space

    `Box(-1, 1, (2,), float32)`: `[advance, rotation]`. Advance maps linearly
    to a forward speed in [0, 1.4] m/s (-1 stands still); rotation to
    [-pi/2, +pi/2] rad/s, positive turning left (counter-clockwise). Values
    outside [-1, 1] are clipped; integer actions work.

    ## Observation Space

    `obs_type="image"` (default): a (64, 64, 3) uint8 egocentric top-down
    view, 8 m across. The robot (blue, with a heading tick) is at the centre
    facing up; people are red discs with a dark heading tick; the goal is a
    green disc, or a small green disc on the view's edge pointing to it when
    it is out of view; the wall is a dark line and the outside is grey.
    Anti-aliased with 4 x 4 supersampling, so sub-pixel motion shows.

    `obs_type="vector"`: 31 float32 (6 + 5 per person):

    | index | observation | unit |
    |-------|-------------|------|
    | 0, 1 | robot x, y in the room | m |
    | 2, 3 | sin, cos of the robot's heading | |
    | 4, 5 | goal x (forward), y (left) in the robot frame | m |
    | 6 + 5j, 7 + 5j | person j's x, y in the robot frame | m |
    | 8 + 5j, 9 + 5j | sin, cos of person j's heading relative to the robot's | |
    | 10 + 5j | person j's speed | m/s |

    ## Rewards

    +1 for reaching the goal (centre within 0.65 m), -1 for a collision
    (centres within 0.4 m at any time during the step), -0.5 for leaving the
    room, -0.5 for the timeout; otherwise -distance_to_goal / 1000 - 1e-5.

    ## Starting State

    Robot, goal and people uniform in the room less a 0.5 m margin; robot
    heading uniform; no person within 1 m of the robot; the goal at least 1.5 m
    away; each person's heading uniform and speed U(0, 1.4) m/s.

    ## Episode End

    Terminated on success, collision or leaving the room; truncated on the
    timeout after exactly `max_steps` steps. On the last step
    `info["outcome"]` is one of `success`, `collision`, `out_of_map`,
    `timeout`. A collision wins over the goal on the same step.

    ## Arguments

    `gymnasium.make("SocNavEnv-v0", n_humans=5, obs_type="image",
    render_mode=None, max_steps=250, view_size=8.0, image_size=64,
    render_size=256)`. `render_mode="rgb_array"` makes `render()` return a
    global top-down view of the room for people and GIFs.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        n_humans: int = N_HUMANS,
        obs_type: str = "image",
        render_mode: str | None = None,
        max_steps: int = MAX_STEPS,
        view_size: float = 8.0,
        image_size: int = 64,
        render_size: int = 256,
    ):
        self.config = _env_config(
            obs_type, render_mode, n_humans, max_steps, view_size, image_size, render_size
        )
        self.obs_type = obs_type
        self.render_mode = render_mode
        self.sim = SocNavSim(1, self.config)
        self.observation_space = _observation_space(self.config, obs_type)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._actions = np.zeros((1, 2))

    def _observe(self):
        if self.obs_type == "image":
            return self.sim.observe_images()[0]
        return self.sim.observe_vectors()[0]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.sim.reset_slot(0, self.np_random)
        return self._observe(), {"distance_to_goal": float(self.sim.distance_to_goal()[0])}

    def step(self, action):
        if not self.sim.active[0]:
            raise RuntimeError("step() called on a finished episode: call reset() first")
        self._actions[0] = np.asarray(action, dtype=np.float64).reshape(2)
        self.sim.step(self._actions)
        code = int(self.sim.outcome[0])
        info = {
            "distance_to_goal": float(self.sim.distance_to_goal()[0]),
            "min_human_distance": float(self.sim.min_dist[0]),
        }
        if code != RUNNING:
            info["outcome"] = OUTCOMES[code]
        terminated = code in (SUCCESS, COLLISION, OUT_OF_MAP)
        truncated = code == TIMEOUT
        return self._observe(), float(self.sim.reward[0]), terminated, truncated, info

    def render(self):
        if self.render_mode == "rgb_array":
            return self.sim.render_global()[0]
        return None


class SocNavVectorEnv(VectorEnv):
    """`num_envs` SocNavEnvs as one Gymnasium vector env over `SocNavSim`.

    Autoreset follows Gymnasium's default (next step): the step after an
    episode ends resets that sub-environment, ignores its action and returns
    reward 0. `info["outcome"]` is an (N,) array of outcome names ("" while
    running) and `info["_outcome"]` marks the entries that are set.
    """

    metadata: ClassVar[dict] = {
        "render_modes": ["rgb_array"],
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(self, num_envs: int, **env_kwargs):
        """`env_kwargs`: SocNavEnv's keyword arguments, checked by building one."""
        single = SocNavEnv(**env_kwargs)
        self.config = single.config
        self.num_envs = num_envs
        self.obs_type = single.obs_type
        self.render_mode = single.render_mode
        self.sim = SocNavSim(num_envs, self.config)
        self.single_observation_space = single.observation_space
        self.single_action_space = single.action_space
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._rngs = [np.random.default_rng() for _ in range(num_envs)]
        self._needs_reset = np.zeros(num_envs, bool)

    def _observe(self):
        if self.obs_type == "image":
            return self.sim.observe_images()
        return self.sim.observe_vectors()

    def reset(self, *, seed=None, options=None):
        if seed is None:
            seeds = [None] * self.num_envs
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
        for i, s in enumerate(seeds):
            if s is not None or seed is None:
                self._rngs[i] = np.random.default_rng(s)
            self.sim.reset_slot(i, self._rngs[i])
        self._needs_reset[:] = False
        return self._observe(), {}

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.float64).reshape(self.num_envs, 2)
        resetting = np.flatnonzero(self._needs_reset)
        self.sim.step(actions)
        rewards = self.sim.reward.copy()
        codes = self.sim.outcome.copy()
        for i in resetting:
            self.sim.reset_slot(i, self._rngs[i])
            rewards[i] = 0.0
            codes[i] = RUNNING
        terminated = np.isin(codes, (SUCCESS, COLLISION, OUT_OF_MAP))
        truncated = codes == TIMEOUT
        self._needs_reset = terminated | truncated
        names = np.array([OUTCOMES[c] if c != RUNNING else "" for c in codes], dtype=object)
        infos = {"outcome": names, "_outcome": codes != RUNNING}
        return self._observe(), rewards, terminated, truncated, infos

    def render(self):
        if self.render_mode == "rgb_array":
            return self.sim.render_global()
        return None


gym.register(id="SocNavEnv-v0", entry_point=SocNavEnv, max_episode_steps=None)
