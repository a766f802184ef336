"""Draws the environment figures of the README: one episode of a baseline, as a
strip of egocentric frames beside the global view, and as a GIF.

Reads: nothing.
Writes: OUT/env_strip.png, OUT/env_episode.gif (default OUT: docs/img).
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import numpy as np

from lib import drawing
from lib.env import socnavenv as sn
from lib.env.policies import POLICY_NAMES, make_policy
from lib.env.rollouts import run_episodes


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/img", help="output folder")
    p.add_argument("--seed", type=int, default=7, help="episode seed")
    p.add_argument("--policy", choices=POLICY_NAMES, default="oracle", help="who drives")
    args = p.parse_args()

    config = sn.EnvConfig()
    episodes = []
    run_episodes(
        make_policy(args.policy, 1),
        [args.seed],
        config,
        1,
        episodes.append,
        keep_obs=True,
        record=lambda k: True,
    )
    ep = episodes[0]
    print(f"episode seed {args.seed}: {ep.length} steps, {ep.outcome}, return {ep.ret:.3f}")

    picks = np.unique(np.linspace(0, ep.length, 8).round().astype(int))
    ego = drawing.grid([[ep.obs[t] for t in picks]])
    ego = drawing.caption(
        drawing.upscale(ego, 3), f"64x64 egocentric observations, steps {list(picks)}"
    )
    glob = drawing.caption(ep.frames[0], "global view (render_mode='rgb_array'), step 0")
    drawing.save_png(os.path.join(args.out, "env_strip.png"), drawing.side_by_side([glob, ego]))

    gif = [drawing.side_by_side([f, drawing.upscale(o, 4)]) for f, o in zip(ep.frames, ep.obs)]
    drawing.save_gif(os.path.join(args.out, "env_episode.gif"), gif, fps=10)
    print(f"wrote {args.out}/env_strip.png and {args.out}/env_episode.gif")


if __name__ == "__main__":
    main()
