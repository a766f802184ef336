"""M's open-loop fidelity: what a dreamed z still tells about the room k steps ahead.

From every step t of every held-out episode, M starts from its teacher-forced state,
reads the real z_t and a_t, and then runs open loop on its own samples (temperature
tau) under the real actions a_{t+1}, a_{t+2}, ... Its sample after k steps is the
dreamed z of frame t + k. A linear probe fitted on *real* z (V's posterior means of
training episodes) to the true state behind each frame then reads the dreamed z. The
same probe reads the real z of frame t + k (the ceiling) and baselines that need no
M: the last real z copied (z_t), z extrapolated at constant velocity
(z_t + k (z_t - z_{t-1})), and, for a map M (a spatial V), z_t moved by the robot's own
motion alone: warped by the real actions' ego-motion (`lib.models.ego_warp`), what a
room whose people stand still would show. A map M whose dream is no better than this
warp has learnt nothing of the people. Each source's mean squared error against the
real z is reported beside the probe's R². With a trained pixel mover
(`lib.models.pixel_mover`, 04b), "mover" is the mover's dream of frame t + k, made from
the real frames t - 1 and t and the real actions, read as V's z (`LatentDream`).

The true state comes from replaying each episode in the simulator from its seed and
recorded actions (`replay_quantities`); the replay must reproduce the recorded rewards,
so a dataset made by another version of the environment is refused.

Probed quantities (`QUANTITIES`, `lib.diagnostics.probe.task_quantities`, robot frame):
the goal's bearing (goal_sin, goal_cos) and distance (m), and the nearest person's
position (person_x, person_y, m; on frames where one is within
`lib.diagnostics.probe.PERSON_RANGE`).

The same open-loop machinery with the baselines' z in place of M's samples gives the
collision forecasts' baselines (`lib.diagnostics.world_model.forecast_collisions`'s
`source`).
"""

from __future__ import annotations

import os

import numpy as np

from lib.data.latents import LatentEpisodes
from lib.devices import to_host
from lib.diagnostics.probe import (
    LAMBDAS,
    PERSON_QUANTITIES,
    ProbeError,
    Ridge,
    r2_score,
    task_quantities,
)
from lib.env import socnavenv as sn
from lib.models import ego_warp

HORIZONS = (1, 5, 10)  # open-loop steps scored
QUANTITIES = ("goal_sin", "goal_cos", "goal_distance", "person_x", "person_y")
# The groups the targets read: the goal's bearing, the nearest person's position
GROUPS = {"goal_bearing": ("goal_sin", "goal_cos"), "person_position": ("person_x", "person_y")}
# the z a probe reads at frame t + k
SOURCES = ("real", "dream", "copy", "velocity", "warp", "mover")
# `baseline_z`'s; "warp" needs a map's offsets, "mover" a `pixel_mover.LatentDream`
BASELINES = ("copy", "velocity", "warp", "real", "mover")
VALIDATION_FRACTION = 0.2  # of the probe's training episodes, the last: chooses the penalty


class ReplayError(ValueError):
    """An episode file cannot be replayed: no seed, or the simulator disagrees with it."""


def episode_seeds(split_dir: str, data: LatentEpisodes) -> np.ndarray:
    """(E,) int64: each episode's seed, read from its file (only the `seed` key loads)."""
    seeds = []
    for name in data.files:
        path = os.path.join(split_dir, name)
        with np.load(path, allow_pickle=False) as z:
            if "seed" not in z.files:
                raise ReplayError(
                    f"{path} has no seed — regenerate it with 02_generate_rnn_data.py"
                )
            seeds.append(int(z["seed"]))
    return np.asarray(seeds, np.int64)


def replay_quantities(data: LatentEpisodes, seeds, config: sn.EnvConfig) -> dict:
    """The true probed quantities behind every frame, by replaying the episodes.

    Every episode is reset from its seed and stepped with its recorded actions, all
    in one `SocNavSim`; the replayed rewards must match the recorded ones.

    Args:
        data: the encoded episodes (their actions and rewards are used).
        seeds: (E,) the episodes' seeds (`episode_seeds`).
        config: the environment the episodes were made in (02's manifest).

    Returns:
        {name: (F,) float64 for each of `QUANTITIES`, "person_mask": (F,) bool}, one
        row per frame, in `data`'s frame order.

    Raises:
        ReplayError: a replayed reward differs from the recorded one.
    """
    n_eps = len(data)
    sim = sn.SocNavSim(n_eps, config)
    sim.reset_seeds(np.asarray(seeds))
    lengths = data.lengths
    n_frames = int(data.frame_offsets[-1])
    out = {k: np.zeros(n_frames) for k in QUANTITIES}
    out["person_mask"] = np.zeros(n_frames, bool)
    for t in range(int(lengths.max()) + 1):
        live = np.flatnonzero(lengths >= t)  # episodes that have frame t
        q = task_quantities(sim, live)
        rows = data.frame_offsets[live] + t
        for k, column in out.items():
            column[rows] = q[k]
        stepping = lengths > t
        if not stepping.any():
            break
        steps = data.step_offsets[:-1] + np.minimum(t, lengths - 1)
        sim.step(np.where(stepping[:, None], data.action[steps], 0.0))
        recorded = data.reward[steps[stepping]]
        if not np.allclose(sim.reward[stepping], recorded, atol=1e-4):
            e = int(np.flatnonzero(stepping)[np.argmax(np.abs(sim.reward[stepping] - recorded))])
            raise ReplayError(
                f"{data.files[e]}: replaying step {t} from its seed gives reward "
                f"{sim.reward[e]:.4f}, the file says {data.reward[steps[e]]:.4f} — the "
                "episodes were made by another environment; regenerate them with 02"
            )
    return out


def step_frames(data: LatentEpisodes) -> np.ndarray:
    """(S,) the frame index of every step (each episode's frames but its last)."""
    return np.concatenate(
        [np.arange(a, b - 1) for a, b in zip(data.frame_offsets[:-1], data.frame_offsets[1:])]
    )


def baseline_z(
    data: LatentEpisodes, frames: np.ndarray, k: int, source: str, offsets=None, mover=None
) -> np.ndarray:
    """(N, Z) float32: a baseline's guess of the z of frame `frames + k` from z up to
    `frames` (V's means): "copy" repeats z_t, "velocity" extrapolates
    z_t + k (z_t - z_{t-1}) (no velocity at an episode's first frame). "warp" moves the
    S x S map z_t by the ego-motion of the real actions a_t ... a_{t+k-1}, one warp a
    step as a map M moves its state (past the episode's end its last action repeats, as
    in M's forecasts); it needs the map's `offsets` (`MapRNN.offsets`). "real" is no
    guess but the ceiling: the real z of frame t + k (the episode's last frame past its
    end), what a perfect M would dream. "mover" is `mover.z(data, frames, k)`: the pixel
    mover's dream (`lib.models.pixel_mover.LatentDream`) read by V."""
    if source not in BASELINES:
        raise ValueError(f"unknown baseline {source!r}: {', '.join(BASELINES)}")
    if source == "mover":
        if mover is None:
            raise ValueError("the mover baseline needs a trained pixel mover (04b_train_mover.py)")
        return mover.z(data, np.asarray(frames), k)
    z = data.mu[frames]
    episode = np.searchsorted(data.frame_offsets, frames, side="right") - 1
    if source == "copy":
        return z.copy()
    if source == "real":
        return data.mu[np.minimum(frames + k, data.frame_offsets[episode + 1] - 1)].copy()
    if source == "warp":
        if offsets is None:
            raise ValueError("the warp baseline needs a map M's offsets (a spatial V)")
        side = len(offsets)
        cells = z.reshape(len(z), side * side, -1)
        step, last = frames - episode, data.step_offsets[episode + 1] - 1  # a_t's row
        for j in range(k):
            taps = ego_warp.warp_taps(data.action[np.minimum(step + j, last)], offsets)
            cells = ego_warp.warp_maps(cells, taps)
        return cells.reshape(z.shape).astype(np.float32)
    first = np.isin(frames, data.frame_offsets[:-1])
    prev = data.mu[np.where(first, frames, frames - 1)]
    return (z + k * (z - prev)).astype(np.float32)


# Rows a diagnostic steps M on at once. Memory grows with the rows times M's state and
# its gates' im2col columns: 72,000 rows (300 episodes x 4 samples) of a 14 x 14 map M
# took 23 GB and were killed; 8,192 rows of it take about 1.4 GB.
LOCKSTEP_ROWS = 8192


def lockstep_chunks(n: int, rows: int | None = None):
    """Slices covering range(n) in order, `rows` (LOCKSTEP_ROWS) at a time. M's samples
    are drawn chunk by chunk, so at tau > 0 a run whose rows exceed one chunk draws
    other (equally likely) samples than one unchunked run would."""
    rows = rows or LOCKSTEP_ROWS
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)]


def open_loop(rnn, data: LatentEpisodes, forced: dict, rng, tau: float, horizons=HORIZONS):
    """M's dreamed z at each horizon, from every step, under the real actions.

    Args:
        rnn: an M with `step`, `sample` and `initial_state` (`MDNRNN`, or a rigged one).
        data: held-out encoded episodes.
        forced: `world_model.teacher_forced(rnn, data)` (its "h" and "c": M's state
            before each step).
        rng: numpy Generator of M's samples.
        tau: temperature of the samples.
        horizons: the k to keep (>= 1).

    Returns:
        {k: {"start": (N,) start frame t, "target": (N,) frame t + k, "dream": (N, Z)
        float32}}, for the starts whose episode has frame t + k.
    """
    all_starts = step_frames(data)
    episode = np.repeat(np.arange(len(data)), data.lengths)
    all_last_frame = data.frame_offsets[1:][episode] - 1
    all_last_step = data.step_offsets[1:][episode] - 1
    xp = rnn.xp
    dreams = {k: np.zeros((len(all_starts), data.z_size), np.float32) for k in horizons}
    for rows in lockstep_chunks(len(all_starts)):
        steps = np.arange(rows.start, rows.stop)
        state = (xp.asarray(forced["h"][rows]), xp.asarray(forced["c"][rows]))
        z = xp.asarray(data.mu[all_starts[rows]])
        for k in range(1, max(horizons) + 1):
            a = data.action[np.minimum(steps + k - 1, all_last_step[rows])]
            step = rnn.step(z, a, state)
            state = step.state
            z = rnn.sample(step.mixture, tau, rng)
            if k in horizons:
                dreams[k][rows] = to_host(z)
    out = {}
    for k in horizons:
        keep = all_starts + k <= all_last_frame
        out[k] = {
            "start": all_starts[keep],
            "target": all_starts[keep] + k,
            "dream": dreams[k][keep],
        }
    return out


class Probe:
    """Linear probes from z to each of `QUANTITIES`, fitted on real z.

    The ridge penalty of each quantity is chosen on the last `VALIDATION_FRACTION` of
    the training episodes, then the probe is refitted on all of them. Person
    quantities are fitted on frames with a person within range only.

    Args:
        z: (F, Z) real z of the training episodes' frames (V's means).
        targets: `replay_quantities` of the same frames.
        episodes: (F,) episode index of each frame.
    """

    def __init__(self, z: np.ndarray, targets: dict, episodes: np.ndarray):
        ids = np.unique(episodes)
        n_val = max(1, round(VALIDATION_FRACTION * len(ids)))
        if len(ids) - n_val < 1:
            raise ProbeError(f"a probe needs at least 2 training episodes, got {len(ids)}")
        val = np.isin(episodes, ids[len(ids) - n_val :])
        self.models = {}
        for name in QUANTITIES:
            rows = targets["person_mask"] if name in PERSON_QUANTITIES else np.ones(len(z), bool)
            y = np.asarray(targets[name], np.float64)[:, None]
            fit = Ridge(z[rows & ~val], y[rows & ~val])

            def score(lam, fit=fit, rows=rows, y=y):
                try:
                    return r2_score(y[rows & val, 0], fit.predict(z[rows & val], lam)[:, 0])
                except ProbeError:
                    return -np.inf

            lam = max(LAMBDAS, key=score)
            self.models[name] = (Ridge(z[rows], y[rows]), lam)

    def predict(self, name: str, z: np.ndarray) -> np.ndarray:
        ridge, lam = self.models[name]
        return ridge.predict(z, lam)[:, 0]


def fidelity(
    probe: Probe, data: LatentEpisodes, truth: dict, dreams: dict, offsets=None, mover=None
) -> dict:
    """R² of the probe at each horizon, on each source of z, per quantity and group.

    Args:
        probe: fitted on real z of other episodes.
        data: the held-out episodes.
        truth: `replay_quantities` of their frames.
        dreams: `open_loop`'s result.
        offsets: a map M's grid (`MapRNN.offsets`): adds the "warp" baseline; None
            (a dense M) leaves it out.
        mover: a `pixel_mover.LatentDream`: adds the "mover" source; None leaves it out.

    Returns:
        {k: {source: {name: R²}}} for `SOURCES` ("warp" only with `offsets`, "mover"
        only with `mover`) and every
        quantity and `GROUPS` entry (a group's R² pools its quantities' residuals and
        variances), plus {k: {"relative": {name: dream R² / real R²}, "rows": N,
        "z_mse": {source: mean squared error of its z against the real z}}}.
    """
    out = {}
    for k, d in dreams.items():
        sources = {
            "real": data.mu[d["target"]],
            "dream": d["dream"],
            "copy": baseline_z(data, d["start"], k, "copy"),
            "velocity": baseline_z(data, d["start"], k, "velocity"),
        }
        if offsets is not None:
            sources["warp"] = baseline_z(data, d["start"], k, "warp", offsets)
        if mover is not None:
            sources["mover"] = baseline_z(data, d["start"], k, "mover", mover=mover)
        real = sources["real"]
        row = {
            "rows": len(d["target"]),
            "z_mse": {src: float(np.mean((z - real) ** 2)) for src, z in sources.items()},
        }
        for source, z in sources.items():
            scores, parts = {}, {}
            for name in QUANTITIES:
                keep = (
                    truth["person_mask"][d["target"]]
                    if name in PERSON_QUANTITIES
                    else np.ones(len(z), bool)
                )
                y = truth[name][d["target"]][keep]
                pred = probe.predict(name, z[keep])
                parts[name] = (((y - pred) ** 2).sum(), ((y - y.mean()) ** 2).sum())
                scores[name] = 1.0 - parts[name][0] / parts[name][1] if parts[name][1] else None
            for group, names in GROUPS.items():
                res, tot = (sum(parts[n][i] for n in names) for i in (0, 1))
                scores[group] = 1.0 - res / tot if tot else None
            row[source] = scores
        row["relative"] = {
            name: (row["dream"][name] / row["real"][name])
            if row["real"][name] and row["dream"][name] is not None
            else None
            for name in row["real"]
        }
        out[k] = row
    return out
