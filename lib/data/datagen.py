"""Generating rollout datasets (01 for V's frames, 02 for M's episodes).

A dataset is a folder with `train/` and `test/` subfolders of rollout files
(see `lib.env.rollouts`) and a `manifest.json`. Rollout i of split s is seeded
by `derive_seed(seed, stream + "/" + s, i)`, so the files are identical for any
number of workers, and a re-run writes only the missing files.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time

import numpy as np

from lib import manifest, parallel
from lib.env import socnavenv as sn
from lib.env.policies import make_policy
from lib.env.rollouts import episode_filename, list_rollouts, run_episodes, save_episode
from lib.seeding import derive_seed
from tqdm import tqdm
from lib import drawing
from lib.env.policies import POLICY_NAMES
from lib.env.rollouts import BadRolloutError, load_episode

LOCKSTEP = 16  # episodes stepped together in one worker task


class DatasetMismatch(ValueError):
    """An existing dataset was made with other settings."""


@dataclasses.dataclass
class Task:
    out_dir: str
    indices: list
    seeds: list
    policy: str
    config: dict


def _run_task(task: Task) -> dict:
    """Worker: runs the task's episodes in lockstep and writes one file each."""
    config = sn.EnvConfig(**task.config)
    n = len(task.indices)
    policy = make_policy(task.policy, n)
    stats = {"episodes": 0, "frames": 0, "outcomes": collections.Counter()}

    def write(ep):
        ep_path = os.path.join(task.out_dir, episode_filename(task.indices[ep.index]))
        save_episode(ep_path, ep)
        stats["episodes"] += 1
        stats["frames"] += ep.length + 1
        stats["outcomes"][ep.outcome] += 1

    run_episodes(policy, task.seeds, config, n, write, keep_obs=True)
    return stats


def identity(seed: int, policy: str, config: sn.EnvConfig, stream: str) -> dict:
    """What must match for files of two runs to belong to one dataset."""
    return {"seed": seed, "policy": policy, "env": config.to_dict(), "stream": stream}


def check_manifest(root: str, ident: dict, overwrite: bool) -> None:
    """Raises DatasetMismatch if `root` holds a dataset made differently."""
    old = manifest.read_json(os.path.join(root, "manifest.json"))
    if old is None or overwrite:
        return
    old_ident = old.get("identity")
    if old_ident != ident:
        diffs = []
        for key in ("seed", "policy", "stream"):
            if old_ident is None or old_ident.get(key) != ident[key]:
                diffs.append(
                    f"{key} {None if old_ident is None else old_ident.get(key)!r} -> {ident[key]!r}"
                )
        if old_ident is not None and old_ident.get("env") != ident["env"]:
            diffs.append("environment settings")
        raise DatasetMismatch(
            f"{root} holds rollouts made with other settings ({'; '.join(diffs)}); "
            "pass --overwrite to replace them, or use another --data-dir"
        )


def clear_split(directory: str) -> None:
    for path in list_rollouts(directory):
        os.remove(path)


def remove_stale_temporaries(directory: str) -> int:
    """Deletes temporary files left by an interrupted run; returns how many."""
    if not os.path.isdir(directory):
        return 0
    stale = [f for f in os.listdir(directory) if f.startswith(".tmp_")]
    for f in stale:
        os.remove(os.path.join(directory, f))
    return len(stale)


def plan_split(
    directory: str, count: int, seed: int, stream: str, split: str
) -> list[tuple[int, int]]:
    """(index, seed) of the rollouts of a split that are not on disk yet."""
    have = set(os.listdir(directory)) if os.path.isdir(directory) else set()
    return [
        (i, derive_seed(seed, f"{stream}/{split}", i))
        for i in range(count)
        if episode_filename(i) not in have
    ]


def make_tasks(
    out_dir: str, todo: list[tuple[int, int]], policy: str, config: sn.EnvConfig
) -> list[Task]:
    tasks = []
    for start in range(0, len(todo), LOCKSTEP):
        chunk = todo[start : start + LOCKSTEP]
        tasks.append(
            Task(out_dir, [i for i, _ in chunk], [s for _, s in chunk], policy, config.to_dict())
        )
    return tasks


def run_tasks(tasks: list[Task], workers: int, backend: str, address: str | None, progress) -> dict:
    """Runs tasks on `workers` processes (inline for one local worker)."""
    total = {"episodes": 0, "frames": 0, "outcomes": collections.Counter()}

    def add(stats):
        total["episodes"] += stats["episodes"]
        total["frames"] += stats["frames"]
        total["outcomes"].update(stats["outcomes"])
        if progress is not None:
            progress.update(stats["episodes"])
            progress.frames = getattr(progress, "frames", 0) + stats["frames"]
            progress.set_postfix(frames=progress.frames)

    if not tasks:
        return total
    if workers == 1 and backend == "local":
        for task in tasks:
            add(_run_task(task))
        return total
    pool = parallel.make_pool(workers, backend, address)
    try:
        for stats in pool.imap_unordered(_run_task, tasks):
            add(stats)
        pool.close()
    finally:
        pool.terminate()
        pool.join()
    return total


def outcome_table(outcomes: collections.Counter) -> str:
    n = sum(outcomes.values())
    if n == 0:
        return "no new episodes"
    return ", ".join(f"{k} {outcomes[k] / n:.0%}" for k in sn.OUTCOMES[1:])


def dataset_summary(root: str, splits) -> dict:
    """Counts of files per split on disk."""
    return {s: len(list_rollouts(os.path.join(root, s))) for s in splits}


def mean_episode_length(directory: str, limit: int = 50) -> float:
    """Average T over up to `limit` files (a cheap sanity figure)."""
    lengths = []
    for path in list_rollouts(directory)[:limit]:
        with np.load(path, allow_pickle=False) as z:
            lengths.append(len(z["action"]))
    return float(np.mean(lengths)) if lengths else 0.0


def add_generation_args(p) -> None:
    """The flags 01 and 02 share: policy, workers, env settings, backend."""
    from lib import cli

    p.add_argument("--policy", choices=POLICY_NAMES, default="mixed", help="behaviour policy")
    p.add_argument(
        "--workers", type=cli.positive_int, default=cli.default_workers(), help="processes"
    )
    p.add_argument(
        "--n-humans", type=cli.non_negative_int, default=sn.N_HUMANS, help="people in the room"
    )
    p.add_argument(
        "--max-steps", type=cli.positive_int, default=sn.MAX_STEPS, help="steps before timeout"
    )
    p.add_argument(
        "--backend", choices=parallel.BACKENDS, default="local", help="where workers run"
    )
    p.add_argument("--address", default=None, help="Ray cluster address (with --backend ray)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a dataset made with other settings"
    )


def build_dataset(
    root: str, splits: dict, args, config: sn.EnvConfig, stream: str, script: str
) -> dict:
    """The whole of 01/02 after argument parsing: check, plan, generate, summarise.

    Args:
        root: dataset folder (for example data/vae_data).
        splits: {"train": count, "test": count}.
        args: the parsed flags (seed, policy, workers, backend, address, overwrite).
        config: environment settings.
        stream: seed stream name ("vae" or "rnn"), so 01 and 02 differ.
        script: the script's name, for the manifest.

    Returns:
        {"files": per-split counts, "frames": new frames, "seconds": elapsed}.
    """
    from lib import cli  # scripts' one-line failure path

    # CHECKS: nothing is written before the inputs are known to be usable.
    cli.ensure_writable_dir(root)
    ident = identity(args.seed, args.policy, config, stream)
    try:
        check_manifest(root, ident, args.overwrite)
    except DatasetMismatch as e:
        cli.fail(str(e))
    if args.backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            cli.fail("--backend ray needs Ray: pip install -r requirements-ray.txt")

    # PLAN: only the rollouts that are not on disk yet.
    todo = {}
    for split, count in splits.items():
        directory = os.path.join(root, split)
        os.makedirs(directory, exist_ok=True)
        if args.overwrite:
            clear_split(directory)
        remove_stale_temporaries(directory)
        todo[split] = plan_split(directory, count, args.seed, stream, split)
    info = {k: v for k, v in vars(args).items()}
    path = os.path.join(root, "manifest.json")
    manifest.write_json(path, manifest.make(script, info, identity=ident, complete=False))

    # GENERATE

    start = time.perf_counter()
    total_todo = sum(len(t) for t in todo.values())
    print(f"{total_todo} rollouts to write ({sum(splits.values()) - total_todo} already on disk)")
    stats = {}
    try:
        with tqdm(total=total_todo, unit="ep", desc="rollouts") as bar:
            for split, items in todo.items():
                tasks = make_tasks(os.path.join(root, split), items, args.policy, config)
                stats[split] = run_tasks(tasks, args.workers, args.backend, args.address, bar)
    except KeyboardInterrupt:
        cli.fail(
            "interrupted; finished rollouts are kept — re-run the same command to finish", code=130
        )
    elapsed = time.perf_counter() - start

    # SUMMARY
    counts = dataset_summary(root, splits)
    manifest.write_json(
        path, manifest.make(script, info, identity=ident, complete=True, files=counts)
    )
    frames = sum(s["frames"] for s in stats.values())
    for split, s in stats.items():
        print(f"  {split}: {counts[split]} files on disk; new ones: {outcome_table(s['outcomes'])}")
    rate = frames / elapsed if elapsed > 0 else 0.0
    print(f"wrote {frames} frames in {elapsed:.1f} s ({rate:.0f} frames/s) to {root}")
    preview = os.path.join(root, "preview.png")
    if write_preview(os.path.join(root, "train"), preview):
        print(f"preview of the first rollouts: {preview}")
    return {"files": counts, "frames": frames, "seconds": elapsed}


def write_preview(split_dir: str, path: str, episodes: int = 4, columns: int = 10) -> bool:
    """A PNG of a few rollouts: one row each, frames evenly spaced in time.

    Returns False (and writes nothing) when the split has no readable files.
    """

    rows = []
    for file in list_rollouts(split_dir)[:episodes]:
        try:
            ep = load_episode(file, image_size=None)
        except BadRolloutError:
            continue
        obs = ep["obs"]
        picks = np.unique(np.linspace(0, len(obs) - 1, columns).round().astype(int))
        row = drawing.grid([[obs[t] for t in picks]])
        text = f"{os.path.basename(file)}: {len(obs) - 1} steps, {ep.get('outcome', '?')}"
        rows.append(drawing.caption(drawing.upscale(row, 3), text))
    if not rows:
        return False
    drawing.save_png(path, np.concatenate(rows, axis=0))
    return True
