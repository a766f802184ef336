"""Can M be trusted as a simulator? Scores of M on held-out real episodes.

- `teacher_forced`: M reads the real (z_t, a_t) of each episode; its reward and done
  heads are scored against what happened (reward MSE; done precision and recall at the
  threshold the dream uses).
- `collision_forecasts`: from every step t of every episode, M runs open loop for
  `horizon` steps on its own samples with the real actions and forecasts "a collision
  within `horizon` steps" (a predicted end whose predicted reward is a collision's);
  scored by precision and recall against the real episodes.
- `episode_endings`: from each episode's first frame, M dreams the whole episode under
  its real actions; how much of the dream's probability ends the way, and about when,
  the real episode did (the dream a controller is scored in runs whole episodes).
- `dream_vs_real` (in the script): the same controllers' fitness in M's dream and in the
  real environment, and how well one ranks the other.

A dream-trained C is only as good as these: a done head that misses collisions, or a
reward head that pays where the real task does not, is what C learns to exploit.
"""

from __future__ import annotations

import numpy as np

from lib.control.agent import ENDINGS, ending_kind
from lib.data.latents import LatentEpisodes
from lib.devices import to_host
from lib.diagnostics.open_loop import baseline_z, lockstep_chunks, step_frames
from lib.diagnostics.probe import auc
from lib.env import socnavenv as sn
from lib.models import saved_models
from lib.models.controller import n_params
from lib.models.mdn_rnn import (
    DONE_THRESHOLD,
    calibrated_done_logit,
    done_logit_threshold,
    mixture_log_prob,
    sample,
)

COLLISION_HORIZON = 10  # steps
# A predicted end is a collision when its predicted reward is nearer the collision's
# reward (-1) than the other endings' (-0.5 for out of map or timeout, +1 for the goal).
COLLISION_CUT = 0.5 * (sn.COLLISION_REWARD + sn.OUTOFMAP_REWARD)


def rates(predicted: np.ndarray, actual: np.ndarray) -> dict:
    """Precision and recall of boolean predictions (None where undefined)."""
    predicted, actual = np.asarray(predicted, bool), np.asarray(actual, bool)
    hits = int((predicted & actual).sum())
    n_pred, n_true = int(predicted.sum()), int(actual.sum())
    return {
        "precision": hits / n_pred if n_pred else None,
        "recall": hits / n_true if n_true else None,
        "predicted": n_pred,
        "actual": n_true,
    }


def is_collision(reward: np.ndarray, done: np.ndarray) -> np.ndarray:
    """Steps that end an episode in a collision (done, with a collision's reward)."""
    return np.asarray(done, bool) & (np.asarray(reward) < COLLISION_CUT)


def predicts_collision(out) -> np.ndarray:
    """(B,) bool, host: were M's step to end the episode, it would be a collision.

    From an outcome-head M, collision is the likeliest ending; from reward and
    done heads, the predicted reward is nearer a collision's than the others'.
    """
    if out.outcome is not None:
        endings = to_host(out.outcome)[:, 1:]  # success, collision, out of map
        return endings.argmax(axis=1) == sn.COLLISION - 1
    return to_host(out.reward) < COLLISION_CUT


def collision_given_end(out) -> np.ndarray:
    """(B,) float, host: P(collision | the step ends the episode): the outcome head's
    share of collision among the endings, or 0/1 (`predicts_collision`) without it."""
    if out.outcome is not None:
        outcome = to_host(out.outcome).astype(np.float64)
        return outcome[:, sn.COLLISION] / np.maximum(1.0 - outcome[:, 0], 1e-12)
    return predicts_collision(out).astype(np.float64)


def teacher_forced(
    rnn, data: LatentEpisodes, done_pos_weight: float = 1.0, z: np.ndarray | None = None
) -> dict:
    """M's reward and done predictions along the real episodes, and its states.

    M reads `z` (one row per frame, like `data.mu`; default V's posterior means, as the
    agent does) and the real actions.

    Returns:
        {"nll": (S,) M's negative log-likelihood of z_{t+1} per latent dimension (nats);
         "reward", "done_prob": (S,) its reward and calibrated done probability;
         "collision": (S,) bool, an ending there would be a collision (`predicts_collision`);
         "h", "c": (S, H) its state *before* it reads step t (what C sees at t)},
        over all steps of all episodes, episode by episode.
    """
    z = data.mu if z is None else z
    xp = rnn.xp
    steps = int(data.step_offsets[-1])
    h, c = (to_host(v) for v in rnn.initial_state(len(data)))
    out = {
        "nll": np.zeros(steps),
        "reward": np.zeros(steps),
        "done_prob": np.zeros(steps),
        "collision": np.zeros(steps, bool),
        "h": np.zeros((steps, h.shape[1]), np.float32),
        "c": np.zeros((steps, c.shape[1]), np.float32),
    }
    # All episodes in lockstep, the ones still running at step t as one batch (M's
    # rows are independent, so this is each episode's own pass).
    lengths = np.asarray(data.lengths)
    for t in range(int(lengths.max(initial=0))):
        live = np.flatnonzero(lengths > t)
        rows = data.step_offsets[live] + t  # this step's row in the flat outputs
        frames = data.frame_offsets[live] + t
        out["h"][rows], out["c"][rows] = h[live], c[live]
        state = (xp.asarray(h[live]), xp.asarray(c[live]))
        step = rnn.step(z[frames], data.action[rows], state)
        h[live], c[live] = to_host(step.state[0]), to_host(step.state[1])
        log_p = mixture_log_prob(step.mixture, xp.asarray(z[frames + 1]))
        out["nll"][rows] = -to_host(log_p.array).astype(np.float64).mean(axis=1)
        out["reward"][rows] = to_host(step.reward)
        out["collision"][rows] = predicts_collision(step)
        logit = calibrated_done_logit(to_host(step.done_logit).astype(np.float64), done_pos_weight)
        out["done_prob"][rows] = 1.0 / (1.0 + np.exp(-logit))
    return out


def head_scores(data: LatentEpisodes, forced: dict, done_threshold: float = DONE_THRESHOLD) -> dict:
    """Held-out NLL per dimension, reward MSE (and the MSE of always predicting the mean
    reward), and precision / recall of done and of "this step is a collision" at
    `done_threshold`."""
    reward = data.reward.astype(np.float64)
    return {
        "nll": float(np.mean(forced["nll"])),
        "reward_mse": float(np.mean((forced["reward"] - reward) ** 2)),
        "reward_mse_of_the_mean": float(np.var(reward)),
        "done": rates(forced["done_prob"] > done_threshold, data.done),
        "collision_step": rates(
            forced["collision"] & (forced["done_prob"] > done_threshold),
            is_collision(reward, data.done),
        ),
    }


def actual_collision_soon(data: LatentEpisodes, horizon: int = COLLISION_HORIZON) -> np.ndarray:
    """(S,) bool: the episode's collision happens at one of steps t .. t + horizon - 1."""
    out = []
    for e in range(len(data)):
        ep = data.episode(e)
        t_len = len(ep["action"])
        collided = bool(is_collision(ep["reward"][-1:], ep["done"][-1:])[0])
        out.append(collided & (np.arange(t_len) >= t_len - horizon))
    return np.concatenate(out)


# Whose z M's heads read in `forecast_collisions`: its own dream, the baselines', the real.
# "warp": map Ms only; "mover": with a trained pixel mover
FORECAST_SOURCES = ("dream", "copy", "velocity", "warp", "real", "mover")


def collision_forecasts(*args, **kwargs) -> np.ndarray:
    """(S,) bool: from each step t, M forecasts a collision within `horizon` steps
    (`forecast_collisions`' first result; same arguments)."""
    return forecast_collisions(*args, **kwargs)[0]


def forecast_collisions(
    rnn,
    data: LatentEpisodes,
    forced: dict,
    rng: np.random.Generator,
    tau: float = 1.0,
    horizon: int = COLLISION_HORIZON,
    done_pos_weight: float = 1.0,
    done_threshold: float = DONE_THRESHOLD,
    samples: int = 1,
    source: str = "dream",
    mover=None,
) -> tuple[np.ndarray, np.ndarray]:
    """From each step t, M's forecast of a collision within `horizon` steps.

    All S forecasts (times `samples`) run in lockstep: M starts from its teacher-forced
    state at t, reads the real z_t and a_t, then its own samples (temperature `tau`)
    with the real actions a_{t+1}, ... (the last real action repeated past the
    episode's end). With `source` "copy", "velocity" or "warp" (a map M), M's heads
    read a baseline's z instead of its own samples (`lib.diagnostics.open_loop.baseline_z`):
    what M's heads make of a future that does not move, moves on at constant velocity,
    or moves only by the robot's own motion. With
    "real" they read the real future z (the last frame repeated past the episode's
    end): the ceiling of any dream read by these heads, a perfect M's forecast. With
    "mover" they read the pixel mover's dream (`mover`, a `pixel_mover.LatentDream`).

    Returns:
        (hit, risk): (S,) bool, M predicts an end within the horizon and it is a
        collision (in the first sample; a forecast ends at M's first predicted end);
        (S,) float, M's probability of a collision within the horizon, averaged over
        the samples, the soft form a planner scores with (`sum_k S_k P(end at k)
        P(collision | end)`, S_k the probability of running until k; see
        `collision_given_end`), to rank steps by (AUC).
    """
    if source not in FORECAST_SOURCES:
        raise ValueError(f"unknown source {source!r}: {', '.join(FORECAST_SOURCES)}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    offsets = getattr(rnn, "offsets", None)
    if source == "warp" and offsets is None:
        raise ValueError("the warp baseline needs a map M (04 --arch map)")
    if source == "mover" and mover is None:
        raise ValueError("the mover source needs a trained pixel mover (04b_train_mover.py)")
    all_frames = np.tile(step_frames(data), samples)
    n = len(all_frames) // samples
    all_starts = np.tile(np.arange(n), samples)
    all_ends = np.tile(np.repeat(data.step_offsets[1:], data.lengths), samples)
    xp = rnn.xp
    hit = np.zeros(len(all_starts), bool)
    risk = np.zeros(len(all_starts))
    threshold = done_logit_threshold(done_pos_weight, done_threshold)
    for rows in lockstep_chunks(len(all_starts)):
        frames, starts, ends = all_frames[rows], all_starts[rows], all_ends[rows]
        state = tuple(xp.asarray(forced[k][starts]) for k in ("h", "c"))
        z = xp.asarray(data.mu[frames])
        alive = np.ones(len(starts), bool)
        running = np.ones(len(starts))
        for k in range(horizon):
            a = data.action[np.minimum(starts + k, ends - 1)]
            out = rnn.step(z, a, state)
            state = out.state
            logit = to_host(out.done_logit).astype(np.float64)
            done = logit > threshold
            hit[rows] |= alive & done & predicts_collision(out)
            p_end = 1.0 / (1.0 + np.exp(-calibrated_done_logit(logit, done_pos_weight)))
            risk[rows] += running * p_end * collision_given_end(out)
            running *= 1.0 - p_end
            alive &= ~done
            if source == "dream":
                z = rnn.sample(out.mixture, tau, rng)
            else:
                z = xp.asarray(baseline_z(data, frames, k + 1, source, offsets, mover))
    return hit[:n], risk.reshape(samples, n).mean(axis=0)


def episode_endings(rnn, data: LatentEpisodes, rng, tau: float, done_pos_weight=1.0, near=5):
    """Whole episodes in M's dream under their real actions, all in lockstep.

    From each episode's first frame (V's mean) M dreams on its own samples (`tau`)
    while the real actions are replayed, for as many steps as the episode had. Each step
    ends the dream with M's probability of ending (the outcome head's classes; with
    reward and done heads, the calibrated done probability, its kind read from the
    reward head as `lib.control.agent.ending_kind` does), and the rest runs on.

    Args:
        rnn: an M that can dream (outcome head, or reward and done heads).
        data: the episodes.
        rng: numpy Generator of M's samples.
        tau: temperature.
        done_pos_weight: the done head's training weight (for its calibration).
        near: an ending counts as "on time" in the last `near` + 1 steps of the episode.

    Returns:
        dict: "mass" (E, 4), the dream's probability of each ending (success,
        collision, out of map; the last column: still running when the real episode
        ended), "on_time" (E, 4), the same counted only over the last `near` + 1
        steps, and "real" (E,), the column of the real ending (3 for a timeout).
    """
    n, lengths = len(data), data.lengths
    starts = data.step_offsets[:-1]
    z = np.asarray(data.mu[data.frame_offsets[:-1]], np.float32)
    state = rnn.initial_state(n)
    running = np.ones(n)
    mass, on_time = np.zeros((n, 4)), np.zeros((n, 4))
    for t in range(int(lengths.max())):
        live = t < lengths
        a = np.zeros((n, data.action.shape[1]), np.float32)
        a[live] = data.action[starts[live] + t]
        out = rnn.step(rnn.device.send(z), rnn.device.send(a), state)
        state = out.state
        if rnn.outcome_head:
            ends = to_host(out.outcome).astype(np.float64)[:, 1:4]
        else:
            reward, logit = (to_host(v).astype(np.float64) for v in (out.reward, out.done_logit))
            p_end = 1.0 / (1.0 + np.exp(-to_host(calibrated_done_logit(logit, done_pos_weight))))
            ends = np.zeros((n, 3))
            ends[np.arange(n), ending_kind(reward)] = p_end
        step = np.where(live, running, 0.0)[:, None] * ends
        mass[:, :3] += step
        on_time[:, :3] += np.where((lengths - t <= near + 1)[:, None], step, 0.0)
        running = np.where(live, running * (1.0 - ends.sum(axis=1)), running)
        z = to_host(sample(out.mixture, tau, rng))
    mass[:, 3] = on_time[:, 3] = running
    last = data.outcome[data.step_offsets[1:] - 1].astype(np.int64)
    real = np.where((last >= sn.SUCCESS) & (last <= sn.OUT_OF_MAP), last - sn.SUCCESS, 3)
    return {"mass": mass, "on_time": on_time, "real": real}


def episode_ending_scores(endings: dict) -> dict:
    """Summary of `episode_endings`: the mean probability the dream gives each episode's
    real ending (anywhere, and on time), and per kind of real ending the dream's mean
    probabilities of each ending."""
    e = np.arange(len(endings["real"]))
    return {
        "real_ending": float(endings["mass"][e, endings["real"]].mean()),
        "real_ending_on_time": float(endings["on_time"][e, endings["real"]].mean()),
        "by_real_ending": {
            ENDINGS[k]: {
                "episodes": int((endings["real"] == k).sum()),
                "dream": dict(zip(ENDINGS, endings["mass"][endings["real"] == k].mean(0).tolist())),
            }
            for k in range(4)
            if (endings["real"] == k).any()
        },
    }


def copy_baseline_nll(
    train: LatentEpisodes, z_train: np.ndarray, test: LatentEpisodes, z_test: np.ndarray
) -> float:
    """NLL per dimension of "z_{t+1} ~ N(z_t, sigma)", sigma per dimension from the
    training episodes' steps, on the test episodes (z: one row per frame)."""

    def steps(data, z):
        idx = step_frames(data)
        return z[idx].astype(np.float64), z[idx + 1].astype(np.float64)

    cur, nxt = steps(train, z_train)
    sigma = np.maximum((nxt - cur).std(axis=0), 1e-6)
    cur, nxt = steps(test, z_test)
    z = (nxt - cur) / sigma
    return float(np.mean(0.5 * np.log(2 * np.pi) + np.log(sigma) + 0.5 * z * z))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties get average ranks)."""

    def ranks(x):
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        for v in np.unique(x):  # average over ties
            at = x == v
            r[at] = r[at].mean()
        return r

    ra, rb = ranks(np.asarray(a)), ranks(np.asarray(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def bootstrap_interval(statistic, groups: int, rng, rounds: int = 1000, level: float = 0.9):
    """Percentile bootstrap interval of a statistic over `groups` resampled units.

    The units are what is independent: episodes for a forecast scored on their steps
    (steps of one episode are not independent draws), controllers for a ranking.

    Args:
        statistic: callable taking (groups,) int indices, drawn with replacement, and
            returning a float; it may raise ValueError for a draw it cannot score (an
            AUC without positives), which is then drawn again, up to `rounds` times.
        groups: number of units (>= 2).
        rng: np.random.Generator.
        rounds: bootstrap draws.
        level: coverage of the interval, in (0, 1).

    Returns:
        (low, high) floats, or None when fewer than half the draws could be scored.
    """
    if groups < 2:
        raise ValueError(f"a bootstrap needs at least 2 units, got {groups}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = []
    for _ in range(2 * rounds):
        try:
            value = statistic(rng.integers(0, groups, groups))
        except ValueError:
            continue
        if np.isfinite(value):
            values.append(value)
        if len(values) == rounds:
            break
    if len(values) < rounds // 2:
        return None
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def episode_auc_interval(risk: np.ndarray, soon: np.ndarray, lengths: np.ndarray, rng, **kw):
    """`bootstrap_interval` of the AUC of `risk` for `soon` (both (S,), episode after
    episode, `lengths` steps each), the episodes resampled."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    episode_rows = [np.arange(s, s + n) for s, n in zip(starts, lengths)]  # once, not per draw

    def statistic(pick):
        rows = np.concatenate([episode_rows[e] for e in pick])
        return auc(risk[rows], soon[rows])

    return bootstrap_interval(statistic, len(lengths), rng, **kw)


def auc_by_lead(risk: np.ndarray, soon: np.ndarray, lengths: np.ndarray, horizon: int) -> list:
    """The collision forecast's AUC by how far ahead the collision is: for k = 1 ..
    `horizon`, the AUC of the steps k steps before their episode's collision (k = 1: the
    colliding step itself) against every step with no collision within the horizon.

    Returns:
        `horizon` floats, None where no step has that lead.
    """
    lead = np.concatenate([np.arange(n, 0, -1) for n in np.asarray(lengths)])
    negatives = ~np.asarray(soon, bool)
    out = []
    for k in range(1, int(horizon) + 1):
        rows = np.asarray(soon, bool) & (lead == k)
        if not rows.any() or not negatives.any():
            out.append(None)
            continue
        keep = rows | negatives
        out.append(auc(risk[keep], rows[keep]))
    return out


def calibration(risk: np.ndarray, soon: np.ndarray, bins: int = 10) -> dict:
    """How far the forecast risks are from the frequencies they stand for (the AUC only
    ranks them): the Brier score (mean squared error of risk against the outcome),
    beside that of forecasting the base rate everywhere; the expected calibration error
    (ECE: over `bins` equal-width bins of risk, the mean |mean risk - frequency|,
    weighted by the steps in each bin); and the bins themselves.

    Returns:
        {"brier", "base_rate_brier", "ece", "mean_risk", "frequency", "bins": [{"lo", "hi",
        "steps", "mean_risk", "frequency"} for each bin that holds steps]}, or None
        without steps.
    """
    risk = np.asarray(risk, np.float64)
    soon = np.asarray(soon, bool).astype(np.float64)
    if not len(risk):
        return None
    base = soon.mean()
    which = np.minimum((risk * bins).astype(int), bins - 1)  # risk 1 falls in the last
    table, ece = [], 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            mean_risk, frequency = float(risk[rows].mean()), float(soon[rows].mean())
            table.append({"lo": b / bins, "hi": (b + 1) / bins, "steps": int(rows.sum()),
                          "mean_risk": mean_risk, "frequency": frequency})  # fmt: skip
            ece += rows.mean() * abs(mean_risk - frequency)
    return {
        "brier": float(((risk - soon) ** 2).mean()),
        "base_rate_brier": float(base * (1 - base)),
        "ece": float(ece),
        "mean_risk": float(risk.mean()),
        "frequency": float(base),
        "bins": table,
    }


def spearman_interval(dream: np.ndarray, real: np.ndarray, rng, **kw):
    """`bootstrap_interval` of `spearman(dream, real)`, the controllers resampled."""
    dream, real = np.asarray(dream), np.asarray(real)
    return bootstrap_interval(lambda pick: spearman(dream[pick], real[pick]), len(dream), rng, **kw)


# The controllers 07 trains (its --name) that `controller_set` looks for.
TRAINED_CONTROLLERS = ("controller", "controller_dream", "controller_pixel")


def controller_set(
    data_dir: str, mode: str, count: int, z_size: int, hidden_size: int, rng,
    names=TRAINED_CONTROLLERS,
):  # fmt: skip
    """(count, n_params) controllers spanning random to the best the project has.

    07's trained Cs (`names`, models/<name>.npz; those found) trained with this V and M
    come first;
    then random controllers (N(0, s²) weights, s from 0.05 to 1: from nearly standing
    still to saturated, arbitrary turns); then perturbations of each trained C at scales
    from 0.1 to 2 times its weights' spread. Without a trained C all are random.

    Returns:
        (params (count, n_params) float32, labels list of str, trained: how many of the
        first rows are trained Cs).
    """
    size = n_params(z_size, hidden_size)
    trained, labels = [], []
    for name in names:
        try:
            c, sidecar = saved_models.load_controller(data_dir, name)
        except saved_models.CheckpointError:
            continue
        if (
            sidecar.get("rnn_mode") == mode
            and c.size == size
            and not saved_models.trained_with_these(data_dir, sidecar)
        ):
            trained.append(c.get_flat().astype(np.float32))
            labels.append(f"07's {name}")
    trained = trained[:count]
    n_random = count - len(trained) if not trained else max(1, (count - len(trained)) // 3)
    n_perturbed = count - len(trained) - n_random
    rows = list(trained)
    for s in np.geomspace(0.05, 1.0, n_random) if n_random > 1 else [0.3] * n_random:
        rows.append((s * rng.standard_normal(size)).astype(np.float32))
        labels.append(f"random, σ {s:.2g}")
    for j in range(n_perturbed):
        base = trained[j % len(trained)]
        per_base = -(-n_perturbed // len(trained))
        scales = np.geomspace(0.1, 2.0, per_base) if per_base > 1 else [0.5]
        s = scales[j // len(trained)]
        spread = float(base.std()) or 0.5
        rows.append((base + s * spread * rng.standard_normal(size)).astype(np.float32))
        labels.append(f"{labels[j % len(trained)]} + {s:.2g} spread")
    return np.stack(rows), labels, len(trained)


def dream_vs_real(
    dream: np.ndarray,
    real: np.ndarray,
    labels: list,
    trained: int,
    dream_endings: np.ndarray | None = None,
    real_endings: np.ndarray | None = None,
) -> dict:
    """Summary of the same controllers' fitness in M's dream and in the real room.

    Args:
        dream, real: (P,) mean returns of each controller.
        labels: (P,) their names; the first `trained` are trained Cs.
        dream_endings, real_endings: optional (P, 4) fractions of each controller's
            episodes that ended in each of `lib.control.agent.ENDINGS` (success,
            collision, out of map, timeout), in the dream and in the room.

    Returns:
        {"labels", "dream", "real" (lists), "spearman", and per trained C its
        "trained": [{"label", "dream", "real"}], with the endings when given
        ("dream_endings", "real_endings": {ending: fraction})}.
    """
    dream, real = np.asarray(dream, np.float64), np.asarray(real, np.float64)
    rows = []
    for i in range(trained):
        row = {"label": labels[i], "dream": float(dream[i]), "real": float(real[i])}
        for key, ends in (("dream_endings", dream_endings), ("real_endings", real_endings)):
            if ends is not None:
                row[key] = {k: float(v) for k, v in zip(ENDINGS, ends[i])}
        rows.append(row)
    return {
        "labels": list(labels),
        "dream": dream.tolist(),
        "real": real.tolist(),
        "spearman": spearman(dream, real),
        "trained": rows,
    }
