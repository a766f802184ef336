"""Generates random rollouts of SocNavEnv whose episodes train the MDN-RNN (M).

Reads: nothing.
Writes:
    data/rnn_data/{train,test}/NNNNNN.npz, one episode each:
        obs (T+1, 64, 64, 3) uint8, action (T, 2) float32, reward (T,) float32,
        done (T,) bool, outcome str, seed int64 (see lib/env/rollouts.py).
    data/rnn_data/manifest.json: script, arguments, seed, policy, environment
        settings, versions, file counts.

Episode i of a split is seeded from (--seed, split, i) only, so the files are
the same for any --workers, and re-running the command writes only the files
that are missing (an interrupted run loses nothing).
"""

import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import os
import time

from tqdm import tqdm

from lib import cli, parallel
from lib.data import datagen

SCRIPT = "02_generate_rnn_data.py"


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=cli.non_negative_int, default=2000, help="training episodes")
    p.add_argument("--testepisodes", type=cli.non_negative_int, default=100, help="test episodes")
    cli.add_common_args(p)
    datagen.add_generation_args(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    root = os.path.join(args.data_dir, "rnn_data")
    splits = {"train": args.episodes, "test": args.testepisodes}
    config = datagen.env_config(args)
    print(
        f"02: episodes {splits}, policy {args.policy}, seed {args.seed}, "
        f"{args.workers} workers ({args.backend}) -> {root}"
    )

    # CHECKS AND PLAN: nothing is written or deleted before the checks pass; only the
    # rollouts not on disk yet are planned.
    cli.ensure_writable_dir(root)
    try:
        parallel.check_backend(args.backend)
        plan = datagen.plan_dataset(
            root, splits, args.seed, args.policy, config, "rnn", args.overwrite
        )
    except (datagen.DatasetMismatch, parallel.BackendUnavailable) as e:
        cli.fail(str(e))
    datagen.write_manifest(plan, SCRIPT, vars(args), complete=False)
    print(f"{plan.total} rollouts to write ({plan.on_disk} already on disk)")

    # ROLLOUTS: tasks of datagen.LOCKSTEP episodes stepped together, over the workers;
    # each episode is written to its own file as it ends.
    start = time.perf_counter()
    stats = {}
    try:
        with tqdm(total=plan.total, unit="ep", desc="rollouts") as bar:
            for split, todo in plan.todo.items():
                tasks = datagen.make_tasks(os.path.join(root, split), todo, args.policy, config)
                stats[split] = datagen.run_tasks(
                    tasks, args.workers, args.backend, args.address, bar
                )
    except KeyboardInterrupt:
        cli.fail(
            "interrupted; finished rollouts are kept — re-run the same command to finish", code=130
        )
    except datagen.WorkerDied as e:
        cli.fail(str(e))
    elapsed = time.perf_counter() - start

    # SUMMARY: the manifest marked complete, per-split outcomes, a preview image.
    for line in datagen.finish_dataset(plan, stats, elapsed, SCRIPT, vars(args)):
        print(line)


if __name__ == "__main__":
    main()
