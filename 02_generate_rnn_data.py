"""Generates random episodes of SocNavEnv whose steps train the MDN-RNN (M).

Rollouts made as 01 makes them, in their own folder and seed stream, for M: each file is
one whole episode, so M learns from frames, actions, rewards and endings in order.

Reads: nothing.
Writes: data/rnn_data/{train,test}/NNNNNN.npz and data/rnn_data/manifest.json, in the
format 01_generate_vae_data.py describes (--labels: what that policy would do at each
step). As with 01, the files do not depend on --workers and a re-run writes only the
missing ones.
"""

import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import os

from lib.data import datagen

SCRIPT = "02_generate_rnn_data.py"


def parse_args(argv=None):
    return datagen.parse_args(
        argv, __doc__, "episodes", ("--episodes", "--testepisodes"), "04 --task-weight"
    )


def main(argv=None):
    args = parse_args(argv)
    root = os.path.join(args.data_dir, "rnn_data")
    datagen.generate(
        root, {"train": args.episodes, "test": args.testepisodes}, args, "rnn", SCRIPT, "episodes"
    )


if __name__ == "__main__":
    main()
