"""Running episodes in lockstep, and the rollout `.npz` data contract.

`run_episodes` runs any batched policy over a list of seeded episodes, N at a
time in one `SocNavSim`, and hands each finished `Episode` to a callback. Both
data generation (01, 02) and evaluation (08) use it, so an agent is always
measured on exactly the episodes its seeds name, whatever the batch size.

A rollout file holds one episode (`save_episode` / `load_episode`):

| key | shape | dtype | meaning |
|-----|-------|-------|---------|
| obs | (T+1, 64, 64, 3) | uint8 | egocentric frames, obs[t] seen before action[t] |
| action | (T, 2) | float32 | [advance, rotation] in [-1, 1] |
| reward | (T,) | float32 | reward after action[t] |
| done | (T,) | bool | True on the last step only |
| outcome | () | str (unicode) | success / collision / out_of_map / timeout |
| seed | () | int64 | the episode's seed |
| teacher | (T, 2) | float32 | optional (01 `--labels`): a teacher policy's action at obs[t], not played |

Files are written atomically (temporary name, then rename) and load with
`allow_pickle=False`.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Callable, Iterable

import numpy as np

from lib.env import socnavenv as sn
from lib.env.policies import Policy
from lib.fileio import atomic_path

EPISODE_KEYS = ("obs", "action", "reward", "done")


@dataclasses.dataclass
class Episode:
    """One finished episode. `obs` and `frames` are None when not recorded."""

    index: int
    seed: int
    outcome: str
    action: np.ndarray  # (T, 2) float32
    reward: np.ndarray  # (T,) float32
    done: np.ndarray  # (T,) bool
    min_dist: np.ndarray  # (T,) float64, closest centre distance to any human per step
    path: np.ndarray  # (T,) float64, metres moved per step
    obs: np.ndarray | None = None  # (T+1, S, S, 3) uint8
    frames: np.ndarray | None = None  # (T+1, R, R, 3) uint8 global views
    teacher: np.ndarray | None = None  # (T, 2) float32, the labelling policy's action at obs[t]

    @property
    def length(self) -> int:
        return len(self.action)

    @property
    def ret(self) -> float:
        return float(np.sum(self.reward, dtype=np.float64))


def run_episodes(
    policy: Policy,
    seeds: Iterable[int],
    config: sn.EnvConfig,
    n_envs: int,
    on_episode: Callable[[Episode], None],
    keep_obs: bool = False,
    record: Callable[[int], bool] | None = None,
    on_step: Callable[[int], None] | None = None,
    teacher: Policy | None = None,
) -> None:
    """Runs one episode per seed, `n_envs` at a time in lockstep.

    Args:
        policy: a batched policy built for `n_envs` slots.
        seeds: episode seeds; episode k starts from `seeds[k]`.
        config: the environment's configuration.
        n_envs: lockstep batch size (slots).
        on_episode: called with each finished `Episode`, in completion order.
        keep_obs: keep every egocentric frame in `Episode.obs`.
        record: `record(k)` True keeps global views of episode k in
            `Episode.frames` and its egocentric frames in `Episode.obs` (for GIFs).
        on_step: called with the number of env-steps taken in each lockstep step.
        teacher: a policy (built for `n_envs` slots) asked at every step what it would
            do in the same state; its actions label `Episode.teacher` and are not played.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        return
    n = min(n_envs, len(seeds))
    if policy.n < n:
        raise ValueError(f"policy was built for {policy.n} slots, need {n}")
    sim = sn.SocNavSim(n, config)
    need_images = keep_obs or policy.needs_image
    record = record or (lambda k: False)

    slot_episode = np.full(n, -1)
    buffers: list[dict | None] = [None] * n
    next_episode = 0

    def start(i: int) -> None:
        nonlocal next_episode
        k = next_episode
        next_episode += 1
        slot_episode[i] = k
        sim.reset_slot(i, np.random.default_rng(seeds[k]))
        policy.reset(np.array([i]), np.array([seeds[k]]), np.array([k]))
        if teacher is not None:
            teacher.reset(np.array([i]), np.array([seeds[k]]), np.array([k]))
        buffers[i] = {
            "teacher": [],
            "obs": [],
            "action": [],
            "reward": [],
            "min_dist": [],
            "path": [],
            "frames": [] if record(k) else None,
            "keep": keep_obs or record(k),
        }

    def sim_of(slots: np.ndarray) -> sn.SocNavSim:
        """A simulator holding copies of `slots`' states, to draw them."""
        sub = sn.SocNavSim(len(slots), config)
        sub.robot[:] = sim.robot[slots]
        sub.goal[:] = sim.goal[slots]
        sub.humans[:] = sim.humans[slots]
        return sub

    for i in range(n):
        start(i)

    images = None
    while (slot_episode >= 0).any():
        busy = np.flatnonzero(slot_episode >= 0)
        if need_images:
            if len(busy) == n:
                images = sim.observe_images(images)
            else:
                images = images if images is not None else sim.observe_images()
                images[busy] = sim_of(busy).observe_images()
        for i in busy:
            b = buffers[i]
            if b["keep"]:
                b["obs"].append(
                    images[i].copy() if need_images else sim_of(np.array([i])).observe_images()[0]
                )
            if b["frames"] is not None:
                b["frames"].append(sim_of(np.array([i])).render_global()[0])

        if teacher is not None:
            told = sn.applied_actions(teacher.act(sim, images if teacher.needs_image else None))
        actions = sn.applied_actions(policy.act(sim, images if policy.needs_image else None))
        sim.step(actions)
        if on_step is not None:
            on_step(len(busy))

        finished = []
        for i in busy:
            b = buffers[i]
            b["action"].append(actions[i])
            b["reward"].append(sim.reward[i])
            b["min_dist"].append(sim.min_dist[i])
            b["path"].append(sim.path[i])
            if teacher is not None:
                b["teacher"].append(told[i])
            if sim.outcome[i] != sn.RUNNING:
                finished.append(i)
        if finished:
            fin = np.array(finished)
            last = sim_of(fin).observe_images()
            for row, i in enumerate(finished):
                b = buffers[i]
                if b["keep"]:
                    b["obs"].append(last[row])
                if b["frames"] is not None:
                    b["frames"].append(sim_of(np.array([i])).render_global()[0])
                k = int(slot_episode[i])
                t = len(b["action"])
                done = np.zeros(t, bool)
                done[-1] = True
                on_episode(
                    Episode(
                        index=k,
                        seed=seeds[k],
                        outcome=sn.OUTCOMES[int(sim.outcome[i])],
                        action=np.stack(b["action"]),
                        reward=np.asarray(b["reward"], np.float32),
                        done=done,
                        min_dist=np.asarray(b["min_dist"]),
                        path=np.asarray(b["path"]),
                        obs=np.stack(b["obs"]) if b["keep"] else None,
                        frames=np.stack(b["frames"]) if b["frames"] is not None else None,
                        teacher=(
                            np.asarray(b["teacher"], np.float32) if teacher is not None else None
                        ),
                    )
                )
                buffers[i] = None
                slot_episode[i] = -1
                if next_episode < len(seeds):
                    start(i)


# ---------------------------------------------------------------------------
# The .npz contract.
# ---------------------------------------------------------------------------
def episode_filename(index: int) -> str:
    return f"{index:06d}.npz"


def save_episode(path: str, episode: Episode) -> None:
    """Writes `episode` to `path` atomically (compressed npz, no pickles)."""
    if episode.obs is None:
        raise ValueError("episode has no frames; run it with keep_obs=True")
    extra = {} if episode.teacher is None else {"teacher": episode.teacher.astype(np.float32)}
    with atomic_path(path) as tmp:
        np.savez_compressed(
            tmp,
            **extra,
            obs=episode.obs,
            action=episode.action.astype(np.float32),
            reward=episode.reward.astype(np.float32),
            done=episode.done.astype(bool),
            outcome=np.array(episode.outcome),
            seed=np.array(episode.seed, np.int64),
        )


class BadRolloutError(ValueError):
    """A rollout file that is missing keys, has wrong shapes, or is corrupt."""


def load_episode(path: str, image_size: int | None = 64) -> dict:
    """Reads and checks one rollout file.

    Args:
        path: a `.npz` written by `save_episode`.
        image_size: expected frame side, or None to accept any.

    Returns:
        dict with `obs` (T+1, S, S, 3) uint8, `action` (T, 2) float32, `reward`
        (T,) float32, `done` (T,) bool and, when present, `outcome` (str),
        `seed` (int) and `teacher` (T, 2) float32.

    Raises:
        BadRolloutError: if the file is unreadable or breaks the contract.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in EPISODE_KEYS if k not in z.files]
            if missing:
                raise BadRolloutError(f"{path}: missing keys {missing}")
            data = {k: z[k] for k in EPISODE_KEYS}
            if "outcome" in z.files:
                data["outcome"] = str(z["outcome"])
            if "seed" in z.files:
                data["seed"] = int(z["seed"])
            if "teacher" in z.files:
                data["teacher"] = z["teacher"]
    except BadRolloutError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise BadRolloutError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    obs, act, rew, done = (data[k] for k in EPISODE_KEYS)
    t = len(act)
    if obs.dtype != np.uint8 or obs.ndim != 4 or obs.shape[-1] != 3:
        raise BadRolloutError(
            f"{path}: obs must be (T+1, S, S, 3) uint8, got {obs.shape} {obs.dtype}"
        )
    if image_size is not None and obs.shape[1:3] != (image_size, image_size):
        raise BadRolloutError(
            f"{path}: frames are {obs.shape[1]}x{obs.shape[2]}, expected {image_size}"
        )
    if (
        t < 1
        or obs.shape[0] != t + 1
        or act.shape != (t, 2)
        or rew.shape != (t,)
        or done.shape != (t,)
    ):
        raise BadRolloutError(
            f"{path}: inconsistent lengths obs {obs.shape}, action {act.shape}, "
            f"reward {rew.shape}, done {done.shape}"
        )
    if "teacher" in data and data["teacher"].shape != (t, 2):
        raise BadRolloutError(
            f"{path}: teacher labels are {data['teacher'].shape}, expected ({t}, 2)"
        )
    data["action"] = act.astype(np.float32, copy=False)
    data["reward"] = rew.astype(np.float32, copy=False)
    data["done"] = done.astype(bool, copy=False)
    return data


def list_rollouts(directory: str) -> list[str]:
    """Sorted paths of the rollout files in `directory` (temporary files skipped)."""
    if not os.path.isdir(directory):
        return []
    return sorted(
        os.path.join(directory, f)
        for f in os.listdir(directory)
        if f.endswith(".npz") and not f.startswith(".")
    )
