"""Linear probes: how much of the task a feature vector carries, linearly.

C is linear in [z, h], so whatever it needs (where the goal is, where the nearest
person is and where they are going, how close the wall is, whether a collision is
coming) must be linearly readable from z and h. A probe fits ridge regression from
features to the true value of each such quantity on some episodes and reports R² on
other episodes (AUC for the binary "collision soon"). A low R² for z where the
vector observation scores high says V lost that quantity.

The quantities (`QUANTITIES`), all in the robot's frame (x forward, y left), read at
decision time t (the state the frame obs[t] shows):

- goal_sin, goal_cos: the goal's bearing; goal_distance (m);
- person_x, person_y (m), person_vx, person_vy (m/s): the nearest person's position
  and walking velocity, on the steps where one is within `PERSON_RANGE`;
- wall_distance (m): the robot's centre to the nearest wall;
- collision_soon: the episode ends in a collision within `COLLISION_HORIZON` steps
  (scored by AUC of the linear score, as a classifier).

`ProbeRecorder` wraps any policy: while it plays, it encodes each frame with V, runs M
on the (z, action) pairs exactly as the agent would, and records z, h, the vector
observation, optional pooled pixels and the quantities. `probe` then fits and scores.
"""

from __future__ import annotations

import numpy as np

from lib.env import socnavenv as sn
from lib.env.policies import Policy

PERSON_RANGE = 1.5  # m, centre to centre: "a person nearby" for the person_* quantities
COLLISION_HORIZON = 10  # steps: collision_soon is True this many steps before a collision
REGRESSED = (
    "goal_sin",
    "goal_cos",
    "goal_distance",
    "person_x",
    "person_y",
    "person_vx",
    "person_vy",
    "wall_distance",
)
PERSON_QUANTITIES = ("person_x", "person_y", "person_vx", "person_vy")
QUANTITIES = REGRESSED + ("collision_soon",)
# Ridge penalties tried (features are standardised, so these are comparable across rows);
# the one with the best R² on a validation part of the training episodes is kept.
LAMBDAS = tuple(10.0**k for k in range(-3, 6))
TEST_FRACTION = 0.3  # of episodes, the last ones, scored and never fitted
VALIDATION_FRACTION = 0.2  # of the training episodes, used to choose the penalty


class ProbeError(ValueError):
    """The probe's data cannot give a score (too few rows, or a constant target)."""


def task_quantities(sim: sn.SocNavSim, slots: np.ndarray) -> dict:
    """The probed quantities (except collision_soon) of `slots` in `sim`.

    Returns:
        {name: (len(slots),) float64} for each of `REGRESSED`, and "person_mask",
        (len(slots),) bool, True where a person is within `PERSON_RANGE` (person_*
        are 0 elsewhere).
    """
    robot = sim.robot[slots]
    x, y, th = robot[:, 0], robot[:, 1], robot[:, 2]
    c, s = np.cos(th), np.sin(th)
    gx = sim.goal[slots, 0] - x
    gy = sim.goal[slots, 1] - y
    dist = np.hypot(gx, gy)
    fwd, left = c * gx + s * gy, -s * gx + c * gy
    safe = np.maximum(dist, 1e-9)

    humans = sim.humans[slots]  # (B, H, 4): x, y, heading, speed
    out = {
        "goal_sin": left / safe,
        "goal_cos": fwd / safe,
        "goal_distance": dist,
        "wall_distance": sim.config.half - np.maximum(np.abs(x), np.abs(y)),
    }
    b = len(slots)
    for k in PERSON_QUANTITIES:
        out[k] = np.zeros(b)
    out["person_mask"] = np.zeros(b, bool)
    if humans.shape[1] == 0:
        return out
    hx = humans[:, :, 0] - x[:, None]
    hy = humans[:, :, 1] - y[:, None]
    d = np.hypot(hx, hy)
    j = np.argmin(d, axis=1)
    rows = np.arange(b)
    near = d[rows, j] < PERSON_RANGE
    px, py = hx[rows, j], hy[rows, j]
    vx = humans[rows, j, 3] * np.cos(humans[rows, j, 2])
    vy = humans[rows, j, 3] * np.sin(humans[rows, j, 2])
    out["person_x"] = np.where(near, c * px + s * py, 0.0)
    out["person_y"] = np.where(near, -s * px + c * py, 0.0)
    out["person_vx"] = np.where(near, c * vx + s * vy, 0.0)
    out["person_vy"] = np.where(near, -s * vx + c * vy, 0.0)
    out["person_mask"] = near
    return out


def collision_soon(length: int, outcome: str, horizon: int = COLLISION_HORIZON) -> np.ndarray:
    """(length,) bool: step t is within `horizon` steps of the episode's collision."""
    t = np.arange(length)
    return (outcome == "collision") & (t >= length - horizon)


def pool_pixels(images: np.ndarray, factor: int = 2) -> np.ndarray:
    """(B, S, S, 3) uint8 frames averaged over factor x factor blocks, flattened, in [0, 1]."""
    b, s = images.shape[0], images.shape[1]
    m = s // factor
    x = images[:, : m * factor, : m * factor].astype(np.float32) / 255.0
    return x.reshape(b, m, factor, m, factor, 3).mean(axis=(2, 4)).reshape(b, -1)


class ProbeRecorder(Policy):
    """Plays `inner` and records what a probe needs at every decision.

    Args:
        inner: the policy that acts (a baseline for off-policy data).
        encoder: V's encoder (`lib.kernels.fast_encoder.make_encoder(vae)`), frames -> (mu, logvar).
        rnn: M (`MDNRNN`, on the CPU); its h_t is recorded before M reads (z_t, a_t),
            as the agent's C sees it. None probes V alone: h then has no columns.
        pixels: also record frames pooled by 2 (the raw-pixel reference row).
    """

    needs_image = True

    def __init__(self, inner: Policy, encoder, rnn=None, pixels: bool = False):
        super().__init__(inner.n)
        self.inner, self.encoder, self.rnn, self.pixels = inner, encoder, rnn, pixels
        if rnn is None:
            self.h = self.c = np.zeros((inner.n, 0), np.float32)
        else:
            self.h, self.c = rnn.initial_state(inner.n)
        self.episode_of = np.full(inner.n, -1)
        self.chunks: list[dict] = []

    def reset(self, slots, seeds, episodes=None):
        slots = np.asarray(slots)
        self.inner.reset(slots, seeds, episodes)
        self.h[slots] = 0.0
        self.c[slots] = 0.0
        self.episode_of[slots] = episodes if episodes is not None else -1

    def act(self, sim, images=None):
        live = np.flatnonzero(sim.active)
        actions = self.inner.act(sim, images if self.inner.needs_image else None)
        a = sn.applied_actions(actions)[live]
        z, _ = self.encoder(images[live])
        chunk = {
            "episode": self.episode_of[live].copy(),
            "step": sim.steps[live].copy(),
            "z": np.asarray(z, np.float32),
            "h": self.h[live].copy(),
            "vector": sim.observe_vectors()[live],
            **task_quantities(sim, live),
        }
        if self.pixels:
            chunk["pixels"] = pool_pixels(images[live])
        self.chunks.append(chunk)
        if self.rnn is not None:
            out = self.rnn.step(z, a, (self.h[live], self.c[live]), mixture=False)
            self.h[live], self.c[live] = out.state
        return actions

    def table(self, outcomes: dict) -> dict:
        """All recorded rows as arrays, with collision_soon from `outcomes`
        ({episode index: (length, outcome)}), sorted by (episode, step)."""
        rows = {k: np.concatenate([c[k] for c in self.chunks]) for k in self.chunks[0]}
        order = np.lexsort((rows["step"], rows["episode"]))
        rows = {k: v[order] for k, v in rows.items()}
        soon = np.zeros(len(order), bool)
        for e, (length, outcome) in outcomes.items():
            at = rows["episode"] == e
            soon[at] = collision_soon(length, outcome)[rows["step"][at]]
        rows["collision_soon"] = soon
        return rows


# ---------------------------------------------------------------------------
# Fitting and scoring.
# ---------------------------------------------------------------------------
def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination, 1 - SS_res / SS_tot (1 is perfect, 0 is the mean)."""
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0:
        raise ProbeError("the target is constant on the scored rows")
    return 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the chance a positive outscores a negative (ties count half)."""
    labels = np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ProbeError("AUC needs both classes among the scored rows")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = np.asarray(scores)[order]
    # Average ranks over ties.
    _, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = start + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


class Ridge:
    """Ridge regression on standardised features, for every penalty in one eigendecomposition.

    With fewer rows than features (pooled pixels: 3,072 features, a few hundred rows) the
    decomposition is of the (N, N) Gram matrix instead of the (D, D) covariance (the dual
    form, w = X^T (X X^T + lam I)^-1 y): the same weights, at a fraction of the cost.

    Args:
        x: (N, D) training features; y: (N, K) targets.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray):
        x = np.asarray(x, np.float64)
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.scale = np.where(std > 1e-12, std, 1.0)
        xs = (x - self.mean) / self.scale
        self.y_mean = y.mean(axis=0)
        yc = y - self.y_mean
        self.dual = len(xs) < xs.shape[1]
        if self.dual:  # weights = xs^T U (S + lam)^-1 U^T y, U S U^T = xs xs^T
            self.evals, self.evecs = np.linalg.eigh(xs @ xs.T)
            self.xty = self.evecs.T @ yc  # (N, K), in the Gram matrix's eigenbasis
            self.back = xs.T @ self.evecs  # (D, N)
        else:  # weights = V (S + lam)^-1 V^T xs^T y, V S V^T = xs^T xs
            self.evals, self.evecs = np.linalg.eigh(xs.T @ xs)
            self.xty = self.evecs.T @ (xs.T @ yc)  # (D, K), in the eigenbasis
            self.back = self.evecs

    def weights(self, lam: float) -> np.ndarray:
        return self.back @ (self.xty / (np.maximum(self.evals, 0.0) + lam)[:, None])

    def predict(self, x: np.ndarray, lam: float) -> np.ndarray:
        xs = (np.asarray(x, np.float64) - self.mean) / self.scale
        return xs @ self.weights(lam) + self.y_mean


def split_episodes(episodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row masks (fit, validation, test) by episode: the last `TEST_FRACTION` of the
    episodes are scored; of the rest, the last `VALIDATION_FRACTION` choose the penalty."""
    ids = np.unique(episodes)
    n_test = max(1, round(TEST_FRACTION * len(ids)))
    n_val = max(1, round(VALIDATION_FRACTION * (len(ids) - n_test)))
    if len(ids) - n_test - n_val < 1:
        raise ProbeError(f"a probe needs at least 3 episodes, got {len(ids)}")
    test_ids = ids[len(ids) - n_test :]
    val_ids = ids[len(ids) - n_test - n_val : len(ids) - n_test]
    test = np.isin(episodes, test_ids)
    val = np.isin(episodes, val_ids)
    return ~(test | val), val, test


def _score(name: str, y: np.ndarray, pred: np.ndarray) -> float:
    return auc(pred, y > 0.5) if name == "collision_soon" else r2_score(y, pred)


def fit_and_score(features: np.ndarray, targets: dict, episodes: np.ndarray) -> dict:
    """Probes `features` for each target; the penalty is chosen on validation episodes,
    then the probe is refitted on fit + validation episodes and scored on test episodes.

    Args:
        features: (N, D) one row per recorded step.
        targets: {name: (N,) values}; person_* targets are fitted and scored only on rows
            where targets["person_mask"] is True (when given).
        episodes: (N,) episode index of each row.

    Returns:
        {name: {"score": R² (AUC for collision_soon; None when the test rows cannot give
                one), "lambda": chosen penalty, "rows": test rows scored,
                "true", "pred": the test rows' values and predictions}}.
    """
    fit, val, test = split_episodes(episodes)
    groups = {}
    for name, y in targets.items():
        if name == "person_mask":
            continue
        masked = name in PERSON_QUANTITIES and "person_mask" in targets
        groups.setdefault(masked, []).append(name)
    results = {}
    for masked, names in groups.items():
        rows = targets["person_mask"] if masked else np.ones(len(episodes), bool)
        y = np.stack([np.asarray(targets[n], np.float64) for n in names], axis=1)
        ridge = Ridge(features[fit & rows], y[fit & rows])
        preds = {lam: ridge.predict(features[val & rows], lam) for lam in LAMBDAS}
        final = Ridge(features[(fit | val) & rows], y[(fit | val) & rows])
        for k, name in enumerate(names):
            yv = y[val & rows, k]
            best = max(LAMBDAS, key=lambda lam: _safe_score(name, yv, preds[lam][:, k]))
            pred = final.predict(features[test & rows], best)[:, k]
            results[name] = {
                "score": _safe_score(name, y[test & rows, k], pred, missing=None),
                "lambda": best,
                "rows": int((test & rows).sum()),
                "true": y[test & rows, k],
                "pred": pred,
            }
    return results


def _safe_score(name, y, pred, missing=-np.inf):
    """The score, or `missing` where the rows cannot give one (none, or one class only)."""
    try:
        return _score(name, y, pred)
    except ProbeError:
        return missing


def random_relu_features(
    x: np.ndarray, count: int, rng: np.random.Generator, reference: np.ndarray
) -> np.ndarray:
    """`count` random ReLU features of `x` (a fixed non-linear readout to compare with the
    linear one): relu(W x' + b), x' standardised with `reference`'s statistics,
    W ~ N(0, 1 / D), b ~ N(0, 1)."""
    mean, std = reference.mean(axis=0), reference.std(axis=0)
    xs = (x - mean) / np.where(std > 1e-12, std, 1.0)
    w = rng.standard_normal((x.shape[1], count)) / np.sqrt(x.shape[1])
    b = rng.standard_normal(count)
    return np.maximum(xs @ w + b, 0.0)
