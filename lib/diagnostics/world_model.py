"""Can M be trusted as a simulator? Scores of M on held-out real episodes.

- `teacher_forced`: M reads the real (z_t, a_t) of each episode; its reward and done
  heads are scored against what happened (reward MSE; done precision and recall at the
  threshold the dream uses).
- `collision_forecasts`: from every step t of every episode, M runs open loop for
  `horizon` steps on its own samples with the real actions and forecasts "a collision
  within `horizon` steps" (a predicted end whose predicted reward is a collision's);
  scored by precision and recall against the real episodes.
- `dream_vs_real` (in the script): the same controllers' fitness in M's dream and in the
  real environment, and how well one ranks the other.

A dream-trained C is only as good as these: a done head that misses collisions, or a
reward head that pays where the real task does not, is what C learns to exploit.
"""

from __future__ import annotations

import itertools

import numpy as np

from lib.data.latents import LatentEpisodes
from lib.devices import to_host
from lib.env import socnavenv as sn
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
    out = {"nll": [], "reward": [], "done_prob": [], "collision": [], "h": [], "c": []}
    for e in range(len(data)):
        ep, f0 = data.episode(e), data.frame_offsets[e]
        state = rnn.initial_state(1)
        for t in range(len(ep["action"])):
            out["h"].append(to_host(state[0])[0])
            out["c"].append(to_host(state[1])[0])
            step = rnn.step(z[f0 + t][None], ep["action"][t][None], state)
            state = step.state
            log_p = mixture_log_prob(step.mixture, rnn.xp.asarray(z[f0 + t + 1][None]))
            out["nll"].append(-float(log_p.array.mean()))
            out["reward"].append(float(to_host(step.reward)[0]))
            out["collision"].append(bool(predicts_collision(step)[0]))
            logit = calibrated_done_logit(float(to_host(step.done_logit)[0]), done_pos_weight)
            out["done_prob"].append(1.0 / (1.0 + np.exp(-logit)))
    types = {"h": np.float32, "c": np.float32, "collision": bool}
    return {k: np.asarray(v, types.get(k, np.float64)) for k, v in out.items()}


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
) -> tuple[np.ndarray, np.ndarray]:
    """From each step t, M's forecast of a collision within `horizon` steps.

    All S forecasts run in lockstep: M starts from its teacher-forced state at t, reads
    the real z_t and a_t, then its own samples (temperature `tau`) with the real actions
    a_{t+1}, ... (the last real action repeated past the episode's end). A forecast ends
    at M's first predicted end.

    Returns:
        (hit, risk): (S,) bool, M predicts an end within the horizon and it is a
        collision; (S,) float, M's probability of a collision within the horizon, the
        soft form a planner scores with (`sum_k S_k P(end at k) P(collision | end)`, S_k
        the probability of running until k; see `collision_given_end`), to rank
        steps by (AUC).
    """
    z = data.mu[_step_frames(data)]
    starts = np.arange(len(z))
    ends = np.repeat(data.step_offsets[1:], data.lengths)  # one past each step's episode
    state = (rnn.xp.asarray(forced["h"]), rnn.xp.asarray(forced["c"]))
    z = rnn.xp.asarray(z)
    alive = np.ones(len(starts), bool)
    hit = np.zeros(len(starts), bool)
    running = np.ones(len(starts))
    risk = np.zeros(len(starts))
    threshold = done_logit_threshold(done_pos_weight, done_threshold)
    for k in range(horizon):
        a = data.action[np.minimum(starts + k, ends - 1)]
        out = rnn.step(z, a, state)
        state = out.state
        logit = to_host(out.done_logit).astype(np.float64)
        done = logit > threshold
        hit |= alive & done & predicts_collision(out)
        p_end = 1.0 / (1.0 + np.exp(-calibrated_done_logit(logit, done_pos_weight)))
        risk += running * p_end * collision_given_end(out)
        running *= 1.0 - p_end
        alive &= ~done
        z = sample(out.mixture, tau, rng)
    return hit, risk


def copy_baseline_nll(
    train: LatentEpisodes, z_train: np.ndarray, test: LatentEpisodes, z_test: np.ndarray
) -> float:
    """NLL per dimension of "z_{t+1} ~ N(z_t, sigma)", sigma per dimension from the
    training episodes' steps, on the test episodes (z: one row per frame)."""

    def steps(data, z):
        idx = _step_frames(data)
        return z[idx].astype(np.float64), z[idx + 1].astype(np.float64)

    cur, nxt = steps(train, z_train)
    sigma = np.maximum((nxt - cur).std(axis=0), 1e-6)
    cur, nxt = steps(test, z_test)
    z = (nxt - cur) / sigma
    return float(np.mean(0.5 * np.log(2 * np.pi) + np.log(sigma) + 0.5 * z * z))


def _step_frames(data: LatentEpisodes) -> np.ndarray:
    """(S,) the frame index of every step (each episode's frames but its last)."""
    return np.concatenate([np.arange(a, b - 1) for a, b in itertools.pairwise(data.frame_offsets)])


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
