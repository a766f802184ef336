"""Generates random rollouts of SocNavEnv whose frames train the VAE (V).

Reads: nothing.
Writes:
    data/vae_data/{train,test}/NNNNNN.npz, one episode each:
        obs (T+1, 64, 64, 3) uint8, action (T, 2) float32, reward (T,) float32,
        done (T,) bool, outcome str, seed int64 (see lib/env/rollouts.py); with
        --labels, teacher (T, 2) float32: what that policy would do at each frame.
    data/vae_data/manifest.json: script, arguments, seed, policy, environment
        settings, versions, file counts.

Rollout i of a split is seeded from (--seed, split, i) only, so the files are
the same for any --workers, and re-running the command writes only the files
that are missing (an interrupted run loses nothing).
"""

import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import os

from lib.data import datagen

SCRIPT = "01_generate_vae_data.py"


def parse_args(argv=None):
    return datagen.parse_args(
        argv, __doc__, "rollouts", ("--rollouts", "--testrollouts"), "03 --task-weight"
    )


def main(argv=None):
    args = parse_args(argv)
    splits = {"train": args.rollouts, "test": args.testrollouts}
    datagen.generate(
        os.path.join(args.data_dir, "vae_data"), splits, args, "vae", SCRIPT, "rollouts"
    )


if __name__ == "__main__":
    main()
