"""Probes V's z and M's [z, h]: how much of the task a linear controller can read from them.

Plays --episodes held-out episodes with a baseline policy (--policy; default the data
policy, "mixed"), encodes every frame with V, runs M on the (z, action) pairs as the
agent would, and fits ridge regressions from each feature set to the task's true
quantities, scored on the last 30 % of the episodes (R²; AUC for "collision soon").
The vector observation is the reference row: what a linear controller could read
from a perfect encoder.

Reads:
    data/models/vae.npz and rnn_<mode>.npz (--mode; skipped with --no-rnn), with sidecars.
Writes:
    data/results/probe.json (--out): per feature set and quantity, the score, the
        chosen ridge penalty and the rows scored.
    data/results/probe.md: the same as a Markdown table (also printed).
    data/results/probe.png: the scores as bars, and the goal's bearing (sin) predicted
        against the truth on the test episodes for each feature set.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for lib
import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import os

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import numpy as np
from tqdm import tqdm

from lib import cli, drawing, manifest
from lib.diagnostics import probe
from lib.env import socnavenv as sn
from lib.env.policies import POLICY_NAMES, make_policy
from lib.env.rollouts import run_episodes
from lib.kernels.fast_encoder import make_encoder
from lib.models import saved_models
from lib.models.mdn_rnn import MODES
from lib.seeding import derive_seeds

SCORED = {"collision_soon": "AUC"}  # every other quantity is scored by R²


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=cli.positive_int, default=200, help=EPISODES_HELP)
    p.add_argument("--policy", choices=POLICY_NAMES, default="mixed", help=POLICY_HELP)
    p.add_argument("--mode", choices=MODES, default="dream", help="which M: models/rnn_<mode>.npz")
    p.add_argument("--no-rnn", action="store_true", help="probe V's z only (no M needed)")
    p.add_argument("--pixels", action="store_true", help=PIXELS_HELP)
    p.add_argument("--random-features", type=cli.non_negative_int, default=0, help=RANDOM_HELP)
    p.add_argument("--n-humans", type=cli.non_negative_int, default=sn.N_HUMANS, help="people")
    cli.add_n_envs_arg(p)
    cli.add_out_arg(p, "probe.json")
    cli.add_common_args(p)
    return p.parse_args(argv)


EPISODES_HELP = "episodes to play (the last 30 %% are scored, the rest fitted)"
POLICY_HELP = "who plays the probe's episodes (default: the data policy of 01/02)"
PIXELS_HELP = "add the raw-pixel reference row (frames averaged over 2x2 blocks)"
RANDOM_HELP = "add a row reading z through this many random ReLU features (0: none)"


def table(scores: dict) -> str:
    head = " | ".join(f"{q} ({SCORED.get(q, 'R²')})" for q in probe.QUANTITIES)
    lines = [f"| features | {head} |", "|---" * (len(probe.QUANTITIES) + 1) + "|"]
    for row, result in scores.items():
        cells = [
            "–" if result[q]["score"] is None else f"{result[q]['score']:.2f}"
            for q in probe.QUANTITIES
        ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(path: str, scores: dict) -> None:
    rows = list(scores)
    fig = plt.figure(figsize=(max(10, 2.4 * len(rows)), 8.5))
    grid = fig.add_gridspec(2, len(rows), height_ratios=[1.2, 1], hspace=0.55)
    ax = fig.add_subplot(grid[0, :])
    width = 0.8 / len(rows)
    x = np.arange(len(probe.QUANTITIES))
    for k, row in enumerate(rows):
        vals = [scores[row][q]["score"] or 0.0 for q in probe.QUANTITIES]
        ax.bar(x + (k - (len(rows) - 1) / 2) * width, vals, width, label=row)
    ax.set_xticks(x, [f"{q}\n({SCORED.get(q, 'R²')})" for q in probe.QUANTITIES], fontsize=8)
    ax.set_ylim(0, 1.18)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("held-out score")
    ax.set_title("What a linear readout recovers from each feature set (higher is better)")
    ax.legend(fontsize=8, ncol=len(rows), loc="upper center")
    for k, row in enumerate(rows):
        sub = fig.add_subplot(grid[1, k])
        r = scores[row]["goal_sin"]
        sub.scatter(r["true"], r["pred"], s=1, alpha=0.3)
        sub.plot([-1, 1], [-1, 1], "k--", lw=0.8)
        sub.set_xlim(-1.1, 1.1)
        sub.set_ylim(-1.6, 1.6)
        score = "–" if r["score"] is None else f"{r['score']:.2f}"
        sub.set_title(f"{row}\nR² {score}", fontsize=9)
        sub.set_xlabel("true sin(goal bearing)", fontsize=8)
        if k == 0:
            sub.set_ylabel("predicted sin(goal bearing)", fontsize=8)
        sub.tick_params(labelsize=7)
    drawing.save_figure(fig, path, tight=True)


def main(argv=None):
    args = parse_args(argv)
    results_dir, out = cli.results_paths(args, "probe.json")
    print(
        f"probe: {args.episodes} episodes of {args.policy}, seed {args.seed}, "
        f"{args.n_humans} people, V and M from {args.data_dir}/models -> {out}"
    )

    # INPUTS: V, M (both on the CPU), and the episodes' seeds (a stream no other step uses).
    try:
        vae, v_sidecar = saved_models.load_vae(args.data_dir)
    except saved_models.CheckpointError as e:
        cli.fail(str(e))
    rnn = None
    if not args.no_rnn:
        try:
            rnn, _ = saved_models.load_rnn(args.data_dir, args.mode, vae.z_size)
        except saved_models.CheckpointError as e:
            cli.fail(f"{e} (or pass --no-rnn to probe V alone)")
    config = sn.EnvConfig(n_humans=args.n_humans, **saved_models.observation_settings(v_sidecar))
    cli.ensure_writable_dir(os.path.dirname(os.path.abspath(out)))
    cli.ensure_writable_dir(results_dir)
    seeds = derive_seeds(args.seed, "probe", args.episodes)

    # PLAY: record z, h, the vector observation and the true quantities at every step.
    n = min(args.n_envs, args.episodes)
    recorder = probe.ProbeRecorder(make_policy(args.policy, n), make_encoder(vae), rnn, args.pixels)
    outcomes = {}
    with tqdm(total=args.episodes, desc="episodes", unit="ep", leave=False) as bar:

        def finished(ep):
            outcomes[ep.index] = (ep.length, ep.outcome)
            bar.update(1)

        run_episodes(recorder, seeds, config, n, finished)
    data = recorder.table(outcomes)
    print(
        f"{len(data['episode'])} steps recorded; {data['collision_soon'].mean():.1%} of them "
        f"within {probe.COLLISION_HORIZON} steps of a collision"
    )

    # PROBE: one ridge per feature set and quantity.
    features = {"vector (reference)": data["vector"], "z": data["z"]}
    if rnn is not None:
        features["[z, h]"] = np.concatenate([data["z"], data["h"]], axis=1)
    if args.random_features:
        rng = np.random.default_rng([args.seed, 0xF1])
        features[f"z, {args.random_features} random ReLU"] = probe.random_relu_features(
            data["z"], args.random_features, rng, data["z"]
        )
    if args.pixels:
        features["pixels 32x32"] = data["pixels"]
    targets = {q: data[q] for q in probe.QUANTITIES} | {"person_mask": data["person_mask"]}
    scores = {}
    for name, x in tqdm(features.items(), desc="probes", leave=False):
        scores[name] = probe.fit_and_score(x, targets, data["episode"])

    # REPORT
    text = table(scores)
    print(text)
    report = manifest.make(
        script="diagnostics/probe_features.py",
        args=vars(args),
        results={
            row: {
                q: {k: v for k, v in r.items() if k not in ("true", "pred")} for q, r in res.items()
            }
            for row, res in scores.items()
        },
        steps=len(data["episode"]),
        test_fraction=probe.TEST_FRACTION,
    )
    stem = manifest.write_report(out, report, text)
    figure(stem + ".png", scores)
    print(f"wrote {out}, .md and .png")


if __name__ == "__main__":
    main()
