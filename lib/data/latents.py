"""M's inputs: 02's episodes encoded by V, cached.

`encode_split` runs V's encoder over every frame of a split once and stores the
posterior means and log-variances with the actions, rewards and dones in one
`.npz` (no pickles):

| key | shape | dtype | meaning |
|-----|-------|-------|---------|
| mu, logvar | (sum(T_e + 1), z) | float32 | V's posterior of every frame |
| action | (sum(T_e), 2) | float32 | actions |
| reward | (sum(T_e),) | float32 | rewards |
| done | (sum(T_e),) | bool | True on each episode's last step |
| outcome | (sum(T_e),) | int8 | how each step ended: `socnavenv` code, RUNNING but on the last step |
| teacher | (sum(T_e), 2) | float32 | optional, when every episode has labels (02 `--labels`): a teacher's action at each step's frame |
| frame_offsets | (E + 1,) | int64 | episode e's frames are [frame_offsets[e], frame_offsets[e+1]) |
| step_offsets | (E + 1,) | int64 | episode e's steps likewise |
| files | (E,) | str | source file names |

The cache is keyed by a content hash of the VAE weights and of the list of
episode files (names, sizes, mtimes): it is rebuilt exactly when either
changes. z is re-sampled from (mu, logvar) each epoch, as in the paper.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from lib.models.vae import encode_frames
from lib.kernels.fast_encoder import make_encoder
from lib.fileio import atomic_path, file_hash
from lib.data.frames import selection_key
from lib.env import socnavenv as sn
from lib.env.rollouts import BadRolloutError, list_rollouts, load_episode

# Part of the cache key: caches written before a format change are rebuilt.
CACHE_FORMAT = "v2"  # v2: per-step outcome codes


class NoEpisodesError(ValueError):
    """No usable episode file in the folder."""


class LatentEpisodes:
    """Encoded episodes of one split (see the module docstring for the arrays)."""

    def __init__(self, arrays: dict):
        self.mu = arrays["mu"]
        self.logvar = arrays["logvar"]
        self.action = arrays["action"]
        self.reward = arrays["reward"]
        self.done = arrays["done"]
        self.frame_offsets = arrays["frame_offsets"]
        self.step_offsets = arrays["step_offsets"]
        self.outcome = arrays.get("outcome")
        if self.outcome is None:  # arrays built by hand: read the endings from the rewards
            self.outcome = np.concatenate(
                [np.zeros(0, np.int8)]
                + [
                    step_outcomes({"done": self.done[a:b], "reward": self.reward[a:b]})
                    for a, b in zip(self.step_offsets[:-1], self.step_offsets[1:])
                ]
            )
        self.teacher = arrays.get("teacher")  # (sum(T), 2) float32, or None: no labels
        self.files = [str(f) for f in arrays["files"]]

    def __len__(self) -> int:
        return len(self.frame_offsets) - 1

    @property
    def z_size(self) -> int:
        return self.mu.shape[1]

    @property
    def lengths(self) -> np.ndarray:
        """(E,) int64 steps per episode."""
        return np.diff(self.step_offsets)

    def first(self, n: int) -> LatentEpisodes:
        """The first `n` episodes (all of them when there are no more)."""
        if n >= len(self):
            return self
        f1, s1 = self.frame_offsets[n], self.step_offsets[n]
        arrays = {"mu": self.mu[:f1], "logvar": self.logvar[:f1], "files": self.files[:n]}
        for k in ("action", "reward", "done", "outcome", "teacher"):
            if getattr(self, k) is not None:
                arrays[k] = getattr(self, k)[:s1]
        arrays["frame_offsets"] = self.frame_offsets[: n + 1]
        arrays["step_offsets"] = self.step_offsets[: n + 1]
        return LatentEpisodes(arrays)

    def episode(self, e: int) -> dict:
        """Views of episode e: mu/logvar (T+1, z), action (T, 2), reward, done (T,),
        and teacher (T, 2) when the data has labels."""
        f0, f1 = self.frame_offsets[e], self.frame_offsets[e + 1]
        s0, s1 = self.step_offsets[e], self.step_offsets[e + 1]
        extra = {} if self.teacher is None else {"teacher": self.teacher[s0:s1]}
        return extra | {
            "mu": self.mu[f0:f1],
            "logvar": self.logvar[f0:f1],
            "action": self.action[s0:s1],
            "reward": self.reward[s0:s1],
            "outcome": self.outcome[s0:s1],
            "done": self.done[s0:s1],
        }


def concatenate(parts: list[LatentEpisodes]) -> LatentEpisodes:
    """The episodes of `parts`, in order, as one `LatentEpisodes` (teacher labels only
    when every part has them).

    Raises:
        ValueError: the parts' z sizes differ.
    """
    if len(parts) == 1:
        return parts[0]
    if len({p.z_size for p in parts}) > 1:
        raise ValueError(f"episodes of z sizes {sorted({p.z_size for p in parts})} do not mix")
    arrays = {"files": [f for p in parts for f in p.files]}
    for k in ("mu", "logvar", "action", "reward", "done", "outcome"):
        arrays[k] = np.concatenate([getattr(p, k) for p in parts])
    if all(p.teacher is not None for p in parts):
        arrays["teacher"] = np.concatenate([p.teacher for p in parts])
    for k in ("frame_offsets", "step_offsets"):
        starts = np.cumsum([0] + [getattr(p, k)[-1] for p in parts[:-1]])
        arrays[k] = np.concatenate(
            [getattr(parts[0], k)[:1]] + [getattr(p, k)[1:] + s for p, s in zip(parts, starts)]
        )
    return LatentEpisodes(arrays)


def step_outcomes(episode: dict) -> np.ndarray:
    """(T,) int8 `socnavenv` outcome codes: RUNNING on every step but an ended
    episode's last, which holds how it ended.

    Files without an `outcome` field are read from the last step's reward (a
    timeout and an exit from the room pay alike: those count as out of map
    unless the episode ran `MAX_STEPS` steps).
    """
    done = np.asarray(episode["done"], bool)
    codes = np.full(len(done), sn.RUNNING, np.int8)
    if len(done) == 0 or not done[-1]:
        return codes
    name = episode.get("outcome")
    if name in sn.OUTCOMES:
        codes[-1] = sn.OUTCOMES.index(name)
        return codes
    last = float(episode["reward"][-1])
    if last == sn.REACH_REWARD:
        codes[-1] = sn.SUCCESS
    elif last == sn.COLLISION_REWARD:
        codes[-1] = sn.COLLISION
    else:
        codes[-1] = sn.TIMEOUT if len(done) >= sn.MAX_STEPS else sn.OUT_OF_MAP
    return codes


def cache_path(split_dir: str, vae_path: str) -> str:
    files = list_rollouts(split_dir)
    selection = selection_key(files) if files else ""
    key = hashlib.sha1(f"{CACHE_FORMAT}:{file_hash(vae_path)}:{selection}".encode())
    split = os.path.basename(os.path.normpath(split_dir))
    root = os.path.dirname(os.path.normpath(split_dir))
    return os.path.join(root, "cache", f"latents_{split}_{key.hexdigest()[:12]}.npz")


def encode_split(
    split_dir: str, vae, vae_path: str, max_episodes: int | None = None, progress=None
) -> tuple[LatentEpisodes, dict]:
    """Encodes (or loads the cached encoding of) a split of episodes.

    Args:
        split_dir: folder of episode files, e.g. data/rnn_data/train.
        vae: the loaded `ConvVAE`.
        vae_path: its weights file (hashed into the cache key).
        max_episodes: use at most this many files (sorted by name).
        progress: optional callable(done, total).

    Returns:
        (LatentEpisodes, info with `cache`, `rebuilt`, `skipped` list).
    """
    files = list_rollouts(split_dir)
    if not files:
        raise NoEpisodesError(f"no episode files in {split_dir}")
    path = cache_path(split_dir, vae_path)
    info = {"cache": path, "rebuilt": False, "skipped": []}
    if not os.path.exists(path):
        info["rebuilt"] = True
        _build(files, vae, path, info, progress)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
        info["skipped"] = [str(s) for s in arrays.pop("skipped", [])]
    data = LatentEpisodes(arrays)
    return (data if max_episodes is None else data.first(max_episodes)), info


def _build(files, vae, path, info, progress):
    size = vae.image_size if hasattr(vae, "image_size") else None
    parts = {k: [] for k in ("mu", "logvar", "action", "reward", "done", "outcome", "teacher")}
    f_off, s_off, names, skipped = [0], [0], [], []
    encoder = make_encoder(vae)
    for k, file in enumerate(files):
        try:
            ep = load_episode(file, image_size=size)
        except BadRolloutError as e:
            skipped.append(str(e))
            continue
        mu, logvar = encode_frames(vae, ep["obs"], encoder=encoder)
        parts["mu"].append(mu)
        parts["logvar"].append(logvar)
        for key in ("action", "reward", "done"):
            parts[key].append(ep[key])
        parts["outcome"].append(step_outcomes(ep))
        if ep.get("teacher") is not None:
            parts["teacher"].append(np.asarray(ep["teacher"], np.float32))
        f_off.append(f_off[-1] + len(mu))
        s_off.append(s_off[-1] + len(ep["action"]))
        names.append(os.path.basename(file))
        if progress is not None:
            progress(k + 1, len(files))
    if not names:
        raise NoEpisodesError(f"no usable episode files in {os.path.dirname(files[0])}")
    if len(parts["teacher"]) != len(names):  # labels only when every episode has them
        del parts["teacher"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp:
        np.savez(
            tmp,
            **{k: np.concatenate(v) for k, v in parts.items()},
            frame_offsets=np.array(f_off, np.int64),
            step_offsets=np.array(s_off, np.int64),
            files=np.array(names),
            skipped=np.array(skipped, dtype=str) if skipped else np.zeros(0, "<U1"),
        )
