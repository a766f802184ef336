"""Batches of encoded episodes for M, and the baselines M must beat.

Two ways to cut episodes into training batches, matching 04's modes:
- normal / reward / dream: `episode_plan` draws an epoch's batches of whole
  episodes; `episode_batch` pads a batch's episodes to the longest, and `chunks`
  cuts it into `seq_len` steps for truncated backpropagation through time (the
  LSTM state carries across chunks).
- window: `window_plan` draws an epoch's random windows of `window` steps, and
  `window_batch` gathers them (the state is reset at each window's start).

`sample_z` re-samples every frame's z from V's posterior (once per epoch), and
`baseline_nll` scores the constant-z and copy-z baselines M must beat.

A batch is a dict of (B, T, ...) float32 arrays: `z` (inputs z_t), `a`, `z_next`
(targets z_{t+1}), `reward`, `done`, `outcome` (int8 `socnavenv` codes, see
`latents.step_outcomes`) and `mask` (1 on real steps, 0 on padding;
an episode's steps end at its done, so nothing after done counts); with labelled
data (02 `--labels`) also `teacher` (B, T, 2), the teacher's action at each step's
frame (zero on padding).
"""

from __future__ import annotations

import math

import numpy as np

from lib.data.latents import LatentEpisodes


# What M reads and predicts (04 --z-source): z drawn from V's posterior, re-drawn every
# epoch (the paper), or V's posterior mean, the z the agent itself reads.
Z_SOURCES = ("sample", "mean")


def sample_z(data: LatentEpisodes, rng: np.random.Generator) -> np.ndarray:
    """z = mu + exp(logvar / 2) * eps for every frame: (sum(T+1), Z) float32."""
    eps = rng.standard_normal(data.mu.shape, dtype=np.float32)
    return data.mu + np.exp(0.5 * data.logvar) * eps


def latents_for(data: LatentEpisodes, source: str, rng: np.random.Generator) -> np.ndarray:
    """Every frame's z for M, (sum(T+1), Z) float32: `sample_z` ("sample") or V's
    posterior means ("mean"; `rng` unused)."""
    if source == "mean":
        return data.mu
    if source != "sample":
        raise ValueError(f"unknown z source {source!r}: one of {', '.join(Z_SOURCES)}")
    return sample_z(data, rng)


def _fill(batch: dict, row: int, data: LatentEpisodes, z: np.ndarray, e: int, t0: int, t1: int):
    f0 = data.frame_offsets[e]
    s0 = data.step_offsets[e]
    n = t1 - t0
    batch["z"][row, :n] = z[f0 + t0 : f0 + t1]
    batch["z_next"][row, :n] = z[f0 + t0 + 1 : f0 + t1 + 1]
    batch["a"][row, :n] = data.action[s0 + t0 : s0 + t1]
    batch["reward"][row, :n] = data.reward[s0 + t0 : s0 + t1]
    batch["done"][row, :n] = data.done[s0 + t0 : s0 + t1]
    batch["outcome"][row, :n] = data.outcome[s0 + t0 : s0 + t1]
    batch["mask"][row, :n] = 1.0
    if data.teacher is not None:
        batch["teacher"][row, :n] = data.teacher[s0 + t0 : s0 + t1]


def _empty(b: int, t: int, data: LatentEpisodes) -> dict:
    z_size, a_size = data.z_size, data.action.shape[1]
    extra = {} if data.teacher is None else {"teacher": np.zeros((b, t, a_size), np.float32)}
    return extra | {
        "z": np.zeros((b, t, z_size), np.float32),
        "z_next": np.zeros((b, t, z_size), np.float32),
        "a": np.zeros((b, t, a_size), np.float32),
        "reward": np.zeros((b, t), np.float32),
        "done": np.zeros((b, t), np.float32),
        "outcome": np.zeros((b, t), np.int8),
        "mask": np.zeros((b, t), np.float32),
    }


def episode_plan(n_episodes: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Episodes shuffled and grouped into batches (the last may be smaller)."""
    order = rng.permutation(n_episodes)
    return [order[i : i + batch_size] for i in range(0, n_episodes, batch_size)]


def episode_batch(data: LatentEpisodes, z: np.ndarray, episodes: np.ndarray) -> dict:
    """Whole episodes, padded to the longest: a batch of (B, T_max, ...)."""
    lengths = data.lengths[episodes]
    batch = _empty(len(episodes), int(lengths.max()), data)
    for row, e in enumerate(episodes):
        _fill(batch, row, data, z, int(e), 0, int(lengths[row]))
    return batch


def chunks(batch: dict, seq_len: int) -> list[dict]:
    """Cuts a padded batch into consecutive chunks of `seq_len` steps for
    truncated BPTT; chunks that hold no real step are dropped."""
    t = batch["mask"].shape[1]
    out = []
    for start in range(0, t, seq_len):
        part = {k: v[:, start : start + seq_len] for k, v in batch.items()}
        if part["mask"].any():
            out.append(part)
    return out


def window_plan(
    data: LatentEpisodes, window: int, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Random (episode, start) windows for one epoch: about as many steps as
    the data holds, episodes drawn in proportion to their length.

    Returns:
        list of (B, 2) int64 arrays of (episode, start).
    """
    lengths = data.lengths
    total = int(lengths.sum())
    n_batches = max(1, math.ceil(total / (batch_size * window)))
    p = lengths / total
    eps = rng.choice(len(lengths), size=(n_batches, batch_size), p=p)
    room = np.maximum(lengths[eps] - window, 0)
    starts = np.floor(rng.random((n_batches, batch_size)) * (room + 1)).astype(np.int64)
    return [np.stack([eps[i], starts[i]], axis=1) for i in range(n_batches)]


def window_batch(data: LatentEpisodes, z: np.ndarray, windows: np.ndarray, window: int) -> dict:
    """Windows of `window` steps (shorter episodes are padded and masked)."""
    batch = _empty(len(windows), window, data)
    for row, (e, start) in enumerate(windows):
        end = min(int(start) + window, int(data.lengths[e]))
        _fill(batch, row, data, z, int(e), int(start), end)
    return batch


# ---------------------------------------------------------------------------
# Baselines for the held-out NLL (per latent dimension per step, nats).
# ---------------------------------------------------------------------------
def _gauss_nll(x, mean, std):
    return 0.5 * np.log(2 * np.pi) + np.log(std) + 0.5 * ((x - mean) / std) ** 2


def baseline_nll(
    train: LatentEpisodes, z_train: np.ndarray, test: LatentEpisodes, z_test: np.ndarray
) -> dict:
    """NLL per latent dimension of two baselines on the test split.

    - `constant_z`: z_{t+1} ~ N(mean, std) of the training z, per dimension.
    - `copy_z`: z_{t+1} ~ N(z_t, std of z_{t+1} - z_t on training), per dimension.

    Returns:
        {"constant_z": float, "copy_z": float}
    """

    def pairs(data, z):
        cur, nxt = [], []
        for e in range(len(data)):
            f0, f1 = data.frame_offsets[e], data.frame_offsets[e + 1]
            cur.append(z[f0 : f1 - 1])
            nxt.append(z[f0 + 1 : f1])
        return np.concatenate(cur), np.concatenate(nxt)

    tr_cur, tr_next = pairs(train, z_train)
    te_cur, te_next = pairs(test, z_test)
    mean, std = tr_next.mean(0), tr_next.std(0) + 1e-6
    d_std = (tr_next - tr_cur).std(0) + 1e-6
    return {
        "constant_z": float(_gauss_nll(te_next, mean, std).mean()),
        "copy_z": float(_gauss_nll(te_next, te_cur, d_std).mean()),
    }
