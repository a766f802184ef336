"""Evaluates the baseline policies on the same held-out seeds and prints the
Markdown table of the README.

Reads: nothing.
Writes: stdout (and --json PATH if given).
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lib.env import socnavenv as sn
from lib.env.evaluation import evaluate, evaluation_seeds
from lib.env.policies import make_policy

BASELINES = ("random", "greedy", "greedy_avoid", "oracle")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=1000, help="episodes per policy")
    p.add_argument("--seed", type=int, default=0, help="evaluation seed")
    p.add_argument("--n-humans", type=int, default=sn.N_HUMANS, help="people in the room")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    config = sn.EnvConfig(n_humans=args.n_humans)
    seeds = evaluation_seeds(args.seed, args.episodes)
    results = {}
    print(
        "| policy | success | collision | out of map | timeout | return | steps to goal | personal space |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in BASELINES:
        start = time.perf_counter()
        s, _ = evaluate(make_policy(name, 64), seeds, config, n_envs=64)
        s["seconds"] = time.perf_counter() - start
        results[name] = s
        steps = f"{s['steps_to_goal_mean']:.0f}" if s["steps_to_goal_mean"] else "–"
        print(
            f"| {name} | {s['success_rate']:.1%} | {s['collision_rate']:.1%} | "
            f"{s['out_of_map_rate']:.1%} | {s['timeout_rate']:.1%} | "
            f"{s['return_mean']:.2f} ± {s['return_std']:.2f} | {steps} | "
            f"{s['personal_space_compliance']:.1%} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
