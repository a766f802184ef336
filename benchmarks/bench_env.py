"""Speed of SocNavEnv: prints one JSON line per workload, {"name", "per_sec"}.

    python benchmarks/bench_env.py [NAME ...]

Workloads (actions are uniform random, drawn before timing; finished episodes
are reset inside the timed loop, as in real use):
- env_step_image: one Gymnasium SocNavEnv, image observations, steps/s.
- env_batch_image: 64 envs through the batched core (step + 64 frames), env-steps/s.
- env_step_vector: one Gymnasium SocNavEnv, vector observations, steps/s.

Compare env_step_image with ../shared/reference/seed_render_ref.py (the 2022
env's OpenCV way of making one 64 x 64 frame), run in the same session.
"""

import argparse
import json
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import numpy as np

from lib.env import socnavenv as sn


def _single(obs_type: str, seconds: float) -> float:
    env = sn.SocNavEnv(obs_type=obs_type)
    actions = np.random.default_rng(0).uniform(-1, 1, (4096, 2)).astype(np.float32)
    env.reset(seed=0)
    for a in actions[:200]:  # warm-up (numba kernels load from cache)
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for a in actions:
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                env.reset()
        steps += len(actions)
    return steps / (time.perf_counter() - start)


def env_step_image(seconds):
    return _single("image", seconds)


def env_step_vector(seconds):
    return _single("vector", seconds)


def env_batch_image(seconds, n=64):
    sim = sn.SocNavSim(n)
    rngs = [np.random.default_rng(i) for i in range(n)]
    for i in range(n):
        sim.reset_slot(i, rngs[i])
    actions = np.random.default_rng(0).uniform(-1, 1, (256, n, 2))
    frames = np.empty((n, 64, 64, 3), np.uint8)

    def run(k):
        for t in range(k):
            sim.step(actions[t % len(actions)])
            for i in np.flatnonzero(~sim.active):
                sim.reset_slot(i, rngs[i])
            sim.observe_images(frames)

    run(20)
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(100)
        steps += 100 * n
    return steps / (time.perf_counter() - start)


WORKLOADS = {
    "env_step_image": env_step_image,
    "env_batch_image": env_batch_image,
    "env_step_vector": env_step_vector,
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "names", nargs="*", help=f"workloads to run (default all): {', '.join(WORKLOADS)}"
    )
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per workload")
    args = p.parse_args()
    unknown = [n for n in args.names if n not in WORKLOADS]
    if unknown:
        print(
            f"bench_env.py: error: unknown workload {unknown[0]!r}; choose from {', '.join(WORKLOADS)}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    for name in args.names or WORKLOADS:
        print(
            json.dumps({"name": name, "per_sec": round(WORKLOADS[name](args.seconds), 1)}),
            flush=True,
        )


if __name__ == "__main__":
    main()
