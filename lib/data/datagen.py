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
from collections.abc import Callable
from concurrent import futures

import numpy as np
from tqdm import tqdm

from lib import cli, drawing, manifest, parallel
from lib.env import socnavenv as sn
from lib.env.policies import POLICY_NAMES, Policy, make_policy
from lib.env.rollouts import (
    BadRolloutError,
    episode_filename,
    list_rollouts,
    load_episode,
    run_episodes,
    save_episode,
)
from lib.seeding import derive_seed

LOCKSTEP = 16  # episodes stepped together in one worker task


@dataclasses.dataclass
class AgentPlay:
    """A trained C that plays instead of --policy (02 --agent).

    Attributes:
        policy: its name in the manifest and the summary, e.g. "agent:controller_dream".
        identity: what must match for its episodes to form one dataset (its files'
            hashes, its noise).
        factory: builds it for n lockstep slots (picklable: it travels to the workers).
    """

    policy: str
    identity: dict
    factory: Callable[[int], Policy]


class WorkerDied(RuntimeError):
    """A worker process died while writing rollouts (killed, or out of memory)."""


class DatasetMismatch(ValueError):
    """An existing dataset was made with other settings."""


@dataclasses.dataclass
class Task:
    out_dir: str
    indices: list
    seeds: list
    policy: str
    config: dict
    labels: str | None = None  # a teacher policy whose actions label each frame
    # builds the behaviour policy for n slots instead of `policy` (02 --agent: a trained
    # C, `lib.control.agent.exploring_agent`); picklable, since it travels to workers
    policy_factory: Callable[[int], Policy] | None = None


def _run_task(task: Task) -> dict:
    """Worker: runs the task's episodes in lockstep and writes one file each."""
    config = sn.EnvConfig(**task.config)
    n = len(task.indices)
    policy = task.policy_factory(n) if task.policy_factory else make_policy(task.policy, n)
    stats = {"episodes": 0, "frames": 0, "outcomes": collections.Counter()}

    def write(ep):
        ep_path = os.path.join(task.out_dir, episode_filename(task.indices[ep.index]))
        save_episode(ep_path, ep)
        stats["episodes"] += 1
        stats["frames"] += ep.length + 1
        stats["outcomes"][ep.outcome] += 1

    teacher = make_policy(task.labels, n) if task.labels else None
    run_episodes(policy, task.seeds, config, n, write, keep_obs=True, teacher=teacher)
    return stats


def identity(
    seed: int, policy: str, config: sn.EnvConfig, stream: str, labels: str | None = None,
    agent: dict | None = None,
) -> dict:  # fmt: skip
    """What must match for files of two runs to belong to one dataset (`labels` and
    `agent`, the played C's files and noise, only when set, so datasets made before them
    keep their identity)."""
    ident = {"seed": seed, "policy": policy, "env": config.to_dict(), "stream": stream}
    if labels:
        ident["labels"] = labels
    if agent:
        ident["agent"] = agent
    return ident


def check_manifest(root: str, ident: dict, overwrite: bool) -> None:
    """Raises DatasetMismatch if `root` holds a dataset made differently."""
    old = manifest.read_json(os.path.join(root, "manifest.json"))
    if old is None or overwrite:
        return
    old_ident = old.get("identity")
    if old_ident != ident:
        diffs = []
        for key in ("seed", "policy", "stream", "labels", "agent"):
            if old_ident is None or old_ident.get(key) != ident.get(key):
                diffs.append(
                    f"{key} {None if old_ident is None else old_ident.get(key)!r} -> "
                    f"{ident.get(key)!r}"
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
    out_dir: str,
    todo: list[tuple[int, int]],
    policy: str,
    config: sn.EnvConfig,
    labels: str | None = None,
    policy_factory: Callable[[int], Policy] | None = None,
) -> list[Task]:
    tasks = []
    for start in range(0, len(todo), LOCKSTEP):
        chunk = todo[start : start + LOCKSTEP]
        indices, seeds = [i for i, _ in chunk], [s for _, s in chunk]
        tasks.append(
            Task(out_dir, indices, seeds, policy, config.to_dict(), labels, policy_factory)
        )
    return tasks


def run_tasks(tasks: list[Task], workers: int, backend: str, address: str | None, progress) -> dict:
    """Runs tasks on `workers` processes (inline for one local worker).

    Raises:
        WorkerDied: a local worker process died.
    """
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
        for stats in parallel.imap_unordered(pool, _run_task, tasks):
            add(stats)
    except futures.process.BrokenProcessPool:
        raise WorkerDied(
            "a worker process died (killed, or out of memory?); the rollouts it finished are "
            "kept — re-run the same command to write the rest (with fewer --workers if memory "
            "is short)"
        ) from None
    finally:
        parallel.shutdown(pool)
    return total


def outcome_table(outcomes: collections.Counter) -> str:
    n = sum(outcomes.values())
    if n == 0:
        return "no new episodes"
    return ", ".join(f"{k} {outcomes[k] / n:.0%}" for k in sn.OUTCOMES[1:])


def dataset_summary(root: str, splits) -> dict:
    """Counts of files per split on disk."""
    return {s: len(list_rollouts(os.path.join(root, s))) for s in splits}


def env_config(args) -> sn.EnvConfig:
    """The environment `add_generation_args`' flags describe."""
    return sn.EnvConfig(n_humans=args.n_humans, max_steps=args.max_steps, view_size=args.view_size)


# The privileged policies that may label frames (01 / 02 --labels).
LABEL_POLICIES = [
    p for p in POLICY_NAMES if p in ("greedy", "greedy_avoid", "oracle", "cautious_oracle")
]


def add_labels_arg(p, used_by: str) -> None:
    """`--labels`: record, at every frame, what a privileged policy would do there."""
    p.add_argument(
        "--labels",
        choices=LABEL_POLICIES,
        default=None,
        help="also record, at every frame, the action this privileged policy would take "
        f"there (not played), for {used_by}; default: no labels, as in the paper",
    )


def parse_args(argv, doc: str, noun: str, count_flags: tuple, used_by: str, more=None):
    """01's and 02's arguments: `count_flags` ("--rollouts", "--testrollouts") count the
    training and test `noun` (2,000 and 100 by default); `used_by` reads --labels;
    `more(parser)`, if given, adds a script's own flags."""
    p = cli.ArgumentParser(description=doc.splitlines()[0])
    for flag, default, split in zip(count_flags, (2000, 100), ("training", "test")):
        p.add_argument(flag, type=cli.non_negative_int, default=default, help=f"{split} {noun}")
    add_labels_arg(p, used_by)
    cli.add_common_args(p)
    add_generation_args(p)
    if more is not None:
        more(p)
    return p.parse_args(argv)


def add_generation_args(p) -> None:
    """The flags 01 and 02 share: policy, workers, env settings, backend."""
    p.add_argument(
        "--view-size",
        type=cli.positive_float,
        default=sn.EnvConfig.view_size,
        help="side of the square the egocentric frame covers (m); the goal outside it is a "
        "marker on the frame's edge. 03-08 read it from the data's manifest",
    )
    p.add_argument("--policy", choices=POLICY_NAMES, default="mixed", help="behaviour policy")
    parallel.add_worker_args(p, cli.default_workers(), "processes")
    cli.add_room_args(p, sn.N_HUMANS, sn.MAX_STEPS)
    p.add_argument(
        "--overwrite", action="store_true", help="replace a dataset made with other settings"
    )


@dataclasses.dataclass
class Plan:
    """What 01/02 will write: the rollouts of each split not on disk yet.

    Attributes:
        root: the dataset folder; splits: {split: count wanted};
        identity: what must match for files to belong to this dataset (`identity`);
        todo: {split: [(index, seed), ...]} still to write.
    """

    root: str
    splits: dict
    identity: dict
    todo: dict

    @property
    def total(self) -> int:
        return sum(len(t) for t in self.todo.values())

    @property
    def on_disk(self) -> int:
        return sum(self.splits.values()) - self.total


def plan_dataset(
    root: str, splits: dict, seed: int, policy: str, config: sn.EnvConfig, stream: str,
    overwrite: bool = False, labels: str | None = None, agent: dict | None = None,
) -> Plan:  # fmt: skip
    """Checks `root` against these settings, then plans the missing rollouts.

    Nothing is deleted before the check passes; then, with `overwrite`, the splits'
    rollouts are removed, and temporaries of an interrupted run always are.

    Args:
        root: dataset folder (for example data/vae_data), existing and writable.
        splits: {"train": count, "test": count}.
        seed, policy, config: the rollouts' settings.
        stream: seed stream name ("vae" or "rnn"), so 01 and 02 differ.
        overwrite: replace a dataset made with other settings.
        labels: a teacher policy whose actions label every frame (01 `--labels`), or None.
        agent: the identity of a trained C that plays instead of `policy` (02 --agent).

    Raises:
        DatasetMismatch: `root` holds rollouts made with other settings.
    """
    ident = identity(seed, policy, config, stream, labels, agent)
    check_manifest(root, ident, overwrite)
    todo = {}
    for split, count in splits.items():
        directory = os.path.join(root, split)
        os.makedirs(directory, exist_ok=True)
        if overwrite:
            clear_split(directory)
        remove_stale_temporaries(directory)
        todo[split] = plan_split(directory, count, seed, stream, split)
    return Plan(root, dict(splits), ident, todo)


def write_manifest(plan: Plan, script: str, args: dict, complete: bool) -> None:
    """The dataset's manifest.json: marked incomplete while rollouts are written."""
    extra = {"files": dataset_summary(plan.root, plan.splits)} if complete else {}
    manifest.write_json(
        os.path.join(plan.root, "manifest.json"),
        manifest.make(script, args, identity=plan.identity, complete=complete, **extra),
    )


def finish_dataset(plan: Plan, stats: dict, seconds: float, script: str, args: dict) -> list:
    """Marks the manifest complete, draws `preview.png`, and returns the summary lines
    for the script to print.

    Args:
        stats: {split: `run_tasks` result}; seconds: the time the rollouts took.
    """
    write_manifest(plan, script, args, complete=True)
    counts = dataset_summary(plan.root, plan.splits)
    lines = [
        f"  {split}: {counts[split]} files on disk; new ones: {outcome_table(s['outcomes'])}"
        for split, s in stats.items()
    ]
    frames = sum(s["frames"] for s in stats.values())
    rate = frames / seconds if seconds > 0 else 0.0
    lines.append(f"wrote {frames} frames in {seconds:.1f} s ({rate:.0f} frames/s) to {plan.root}")
    preview = os.path.join(plan.root, "preview.png")
    if write_preview(os.path.join(plan.root, "train"), preview):
        lines.append(f"preview of the first rollouts: {preview}")
    return lines


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


def generate(
    root: str, splits: dict, args, kind: str, script: str, noun: str,
    agent: AgentPlay | None = None,
) -> None:  # fmt: skip
    """01's and 02's run: checks, plan, rollouts over the workers, summary.

    Nothing is written or deleted before the checks pass, and only the rollouts not on
    disk yet are planned, so an interrupted run loses nothing: the same command
    finishes it. A bad dataset, backend or dead worker ends the script with one line.

    Args:
        root: the dataset folder; splits: {"train": n, "test": n}.
        args: the script's arguments (`add_generation_args` and `cli.add_common_args`).
        kind: "vae" or "rnn", the dataset's identity stream; script: its file name;
        noun: what the script calls a rollout ("rollouts" or "episodes").
        agent: a trained C that plays instead of `args.policy` (02 --agent).
    """
    labels = getattr(args, "labels", None)
    policy = agent.policy if agent else args.policy
    print(
        f"{script[:2]}: {noun} {splits}, policy {policy}, seed {args.seed}, "
        f"{args.workers} workers ({args.backend})"
        + (f", each frame labelled by {labels}" if labels else "")
        + f" -> {root}"
    )
    config = env_config(args)
    # CHECKS AND PLAN
    cli.ensure_writable_dir(root)
    try:
        parallel.check_backend(args.backend)
        plan = plan_dataset(
            root, splits, args.seed, policy, config, kind, args.overwrite, labels,
            agent.identity if agent else None,
        )  # fmt: skip
    except (DatasetMismatch, parallel.BackendUnavailable) as e:
        cli.fail(str(e))
    write_manifest(plan, script, vars(args), complete=False)
    print(f"{plan.total} {noun} to write ({plan.on_disk} already on disk)")

    # ROLLOUTS: tasks of LOCKSTEP episodes stepped together, over the workers; each
    # episode is written to its own file as it ends.
    start = time.perf_counter()
    stats = {}
    try:
        with tqdm(total=plan.total, unit="ep", desc=noun) as bar:
            for split, todo in plan.todo.items():
                folder = os.path.join(root, split)
                tasks = make_tasks(
                    folder, todo, policy, config, plan.identity.get("labels"),
                    agent.factory if agent else None,
                )  # fmt: skip
                stats[split] = run_tasks(tasks, args.workers, args.backend, args.address, bar)
    except KeyboardInterrupt:
        cli.fail(
            f"interrupted; finished {noun} are kept — re-run the same command to finish", code=130
        )
    except WorkerDied as e:
        cli.fail(str(e))
    elapsed = time.perf_counter() - start

    # SUMMARY: the manifest marked complete, per-split outcomes, a preview image.
    for line in finish_dataset(plan, stats, elapsed, script, vars(args)):
        print(line)
