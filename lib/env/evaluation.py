"""The evaluator: any batched policy over N seeded episodes, and its metrics.

Every agent in this project, baseline or learned, is reported through
`evaluate`, on seeds from `evaluation_seeds`, so numbers in different tables
are comparable when their seeds match.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from lib.env import socnavenv as sn
from lib.env.policies import Policy
from lib.env.rollouts import Episode, run_episodes
from lib.seeding import derive_seeds

RATE_KEYS = ("success", "collision", "out_of_map", "timeout")


def evaluation_seeds(seed: int, episodes: int) -> np.ndarray:
    """Held-out episode seeds for evaluation (a stream no data script uses)."""
    return derive_seeds(seed, "evaluation", episodes)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate k / n."""
    if n == 0:
        return (0.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 or k = n the exact bound is 0 or 1; rounding can miss it by
    # 1e-18 and leave the rate outside its own interval.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def summarize(episodes: list[Episode]) -> dict:
    """Aggregates finished episodes into the report's metrics.

    Returns:
        dict with `episodes`; `<outcome>_rate` and `<outcome>_rate_ci95` for
        success / collision / out_of_map / timeout; `return_mean`,
        `return_std`; `steps_to_goal_mean` (successes only, None without
        any); `path_length_mean` (m); `min_human_distance_mean` (m, per
        episode minimum of centre distances, averaged); and
        `personal_space_compliance` (fraction of steps with every person at
        least 0.45 m away, averaged over episodes).
    """
    n = len(episodes)
    out: dict = {"episodes": n}
    outcomes = [e.outcome for e in episodes]
    for key in RATE_KEYS:
        k = sum(o == key for o in outcomes)
        out[f"{key}_rate"] = k / n if n else 0.0
        out[f"{key}_rate_ci95"] = list(wilson_interval(k, n))
    returns = np.array([e.ret for e in episodes])
    out["return_mean"] = float(returns.mean()) if n else 0.0
    out["return_std"] = float(returns.std()) if n else 0.0
    wins = [e.length for e in episodes if e.outcome == "success"]
    out["steps_to_goal_mean"] = float(np.mean(wins)) if wins else None
    out["path_length_mean"] = float(np.mean([e.path.sum() for e in episodes])) if n else 0.0
    mins = [float(e.min_dist.min()) for e in episodes if np.isfinite(e.min_dist.min())]
    out["min_human_distance_mean"] = float(np.mean(mins)) if mins else None
    out["personal_space_compliance"] = (
        float(np.mean([(e.min_dist >= sn.PERSONAL_SPACE).mean() for e in episodes])) if n else 0.0
    )
    return out


def evaluate(
    policy: Policy,
    seeds,
    config: sn.EnvConfig | None = None,
    n_envs: int = 64,
    record: int = 0,
    progress=None,
) -> tuple[dict, list[Episode]]:
    """Runs `policy` on one episode per seed and summarises.

    Args:
        policy: batched policy built for at least min(n_envs, len(seeds)) slots.
        seeds: episode seeds (see `evaluation_seeds`).
        config: environment configuration.
        n_envs: lockstep batch size; results do not depend on it.
        record: keep global frames of the first `record` episodes.
        progress: optional tqdm-like object; updated once per finished episode.

    Returns:
        (summary dict from `summarize`, episodes sorted by index).
    """
    config = config or sn.EnvConfig()
    episodes: list[Episode] = []

    def collect(e: Episode) -> None:
        episodes.append(e)
        if progress is not None:
            progress.update(1)

    run_episodes(policy, seeds, config, n_envs, collect, record=lambda k: k < record)
    episodes.sort(key=lambda e: e.index)
    return summarize(episodes), episodes
