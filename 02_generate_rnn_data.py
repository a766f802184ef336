"""Generates random rollouts of SocNavEnv whose episodes train the MDN-RNN (M).

Reads: nothing.
Writes:
    data/rnn_data/{train,test}/NNNNNN.npz, one episode each:
        obs (T+1, 64, 64, 3) uint8, action (T, 2) float32, reward (T,) float32,
        done (T,) bool, outcome str, seed int64 (see lib/env/rollouts.py); with
        --labels, teacher (T, 2) float32: what that policy would do at each step.
    data/rnn_data/manifest.json: script, arguments, seed, policy, environment
        settings, versions, file counts.

Episode i of a split is seeded from (--seed, split, i) only, so the files are
the same for any --workers, and re-running the command writes only the files
that are missing (an interrupted run loses nothing).
"""

import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import os

from lib import cli
from lib.data import datagen

SCRIPT = "02_generate_rnn_data.py"


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=cli.non_negative_int, default=2000, help="training episodes")
    p.add_argument("--testepisodes", type=cli.non_negative_int, default=100, help="test episodes")
    datagen.add_labels_arg(p, "04 --task-weight")
    cli.add_common_args(p)
    datagen.add_generation_args(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    root = os.path.join(args.data_dir, "rnn_data")
    splits = {"train": args.episodes, "test": args.testepisodes}
    print(
        f"02: episodes {splits}, policy {args.policy}, seed {args.seed}, "
        f"{args.workers} workers ({args.backend})"
        + (f", steps labelled by {args.labels}" if args.labels else "")
        + f" -> {root}"
    )
    datagen.generate(root, splits, args, "rnn", SCRIPT, "episodes")


if __name__ == "__main__":
    main()
