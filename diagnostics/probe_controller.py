"""How far a linear controller gets on each input: V's z, the agent's [z, h], raw pixels, the true state.

For each input (--inputs) it fits a linear C, tanh(W x + b), to a privileged
teacher by DAgger (--iterations x --episodes, as `07_train_controller.py
--imitate` fits the agent's C) and plays it on --test-episodes held-out episodes
(`08_test_controller.py --seed --test-seed`'s episodes). Rows that differ only in
C's input say where the agent is limited: a row on the frame's own pixels above
the [z, h] row means V's compression loses what a linear C needs.
See lib/diagnostics/controller_probe.py for the inputs.

Reads:
    data/models/vae.npz (inputs z and zh) and rnn_<mode>.npz (input zh), with sidecars.
Writes:
    data/results/probe_controller.json (--out): per input, the test episodes' summary
        (rates with 95 % intervals, return, ...) and each DAgger iteration's rates.
    data/results/probe_controller.md: the table (also printed).
    data/results/probe_controller.png: success and collision rate per input.
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
from lib.control.imitation import TEACHERS
from lib.diagnostics import controller_probe as cp
from lib.env import socnavenv as sn
from lib.env.evaluation import evaluate, evaluation_seeds
from lib.kernels.fast_encoder import make_encoder
from lib.models import saved_models
from lib.models.mdn_rnn import MODES

LABELS = {
    "z": "z (V)",
    "zh": "[z, h] (V + M, the agent's input)",
    "pixels": "pixels (the frame, pooled)",
    "state": "true state, egocentric features",
}


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inputs", type=input_list, default=",".join(cp.INPUTS), help=INPUTS_HELP)
    p.add_argument("--teacher", choices=TEACHERS, default="oracle", help=TEACHER_HELP)
    p.add_argument("--iterations", type=cli.positive_int, default=5, help="DAgger iterations")
    p.add_argument(
        "--episodes", type=cli.positive_int, default=300, help="episodes per DAgger iteration"
    )
    p.add_argument(
        "--test-episodes", type=cli.positive_int, default=500, help="held-out episodes per input"
    )
    p.add_argument("--test-seed", type=cli.non_negative_int, default=101, help=TEST_SEED_HELP)
    p.add_argument("--pool", type=cli.positive_int, default=2, help=POOL_HELP)
    p.add_argument("--mode", choices=MODES, default="dream", help="which M: models/rnn_<mode>.npz")
    p.add_argument("--n-humans", type=cli.non_negative_int, default=sn.N_HUMANS, help="people")
    cli.add_n_envs_arg(p, "test episodes")
    cli.add_out_arg(p, "probe_controller.json")
    cli.add_common_args(p)
    return p.parse_args(argv)


INPUTS_HELP = f"comma-separated inputs to fit a C on, from {', '.join(cp.INPUTS)}"
TEACHER_HELP = "the privileged policy C imitates (reads the true state; training only)"
TEST_SEED_HELP = (
    "seed of the held-out episodes (08's --seed; 101 is this project's validation stream, "
    "0 the README's test episodes)"
)
POOL_HELP = "the pixels input averages the frame over pool x pool blocks (2: 32x32x3 inputs)"


def input_list(text: str) -> list:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in cp.INPUTS]
    if bad or not names:
        raise ValueError(f"unknown input {', '.join(bad) or repr(text)}")
    return list(dict.fromkeys(names))


input_list.__name__ = f"input list (from {', '.join(cp.INPUTS)})"


def table(results: dict, teacher: str) -> str:
    lines = [
        f"| linear C on (DAgger onto {teacher}) | inputs | success | collision | out of map | timeout | return |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        t = r["test"]
        lo, hi = t["success_rate_ci95"]
        lines.append(
            f"| {LABELS[name]} | {r['size']} | {t['success_rate']:.1%} [{lo:.0%}, {hi:.0%}] "
            f"| {t['collision_rate']:.1%} | {t['out_of_map_rate']:.1%} | {t['timeout_rate']:.1%} "
            f"| {t['return_mean']:+.2f} |"
        )
    return "\n".join(lines)


def figure(path: str, results: dict, teacher: str, episodes: int, pool: int) -> None:
    side = 64 // pool
    ticks = {
        "z": "z\n(V)",
        "zh": "[z, h]\n(V + M: the agent's input)",
        "pixels": f"pixels\n(the frame, {side}x{side}x3)",
        "state": "true state\n(egocentric features)",
    }
    names = list(results)
    fig, ax = plt.subplots(figsize=(2.2 * len(names) + 2, 4.4))
    x = np.arange(len(names))
    for k, (key, colour) in enumerate((("success", "tab:green"), ("collision", "tab:red"))):
        rates = np.array([results[n]["test"][f"{key}_rate"] for n in names])
        ci = np.array([results[n]["test"][f"{key}_rate_ci95"] for n in names])
        at = x + (k - 0.5) * 0.38
        ax.bar(at, rates, 0.38, yerr=np.abs(ci.T - rates), capsize=3, color=colour, label=key)
        for xi, r, top in zip(at, rates, ci[:, 1]):
            ax.text(xi, top + 0.02, f"{r:.0%}", ha="center", fontsize=8)
    # The teacher's own success, on the episodes it drove (DAgger's first iteration).
    own = np.mean([results[n]["dagger"][0]["success_rate"] for n in names])
    ax.axhline(own, color="k", ls="--", lw=0.8)
    ax.text(x[-1] + 0.45, own + 0.015, f"the {teacher} itself: {own:.0%}", ha="right", fontsize=8)
    ax.set_xticks(x, [ticks[n] for n in names], fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel(f"rate on {episodes} held-out episodes")
    ax.set_title(f"A linear C fitted to the {teacher} by DAgger, on each input (95 % intervals)")
    ax.legend(fontsize=8, loc="upper left")
    drawing.save_figure(fig, path, tight=True)


def main(argv=None):
    args = parse_args(argv)
    results_dir, out = cli.results_paths(args, "probe_controller.json")
    print(
        f"probe_controller: inputs {', '.join(args.inputs)}; DAgger onto {args.teacher}, "
        f"{args.iterations} x {args.episodes} episodes (seed {args.seed}); "
        f"{args.test_episodes} test episodes (seed {args.test_seed}) -> {out}"
    )

    # INPUTS: V (z and zh) and M (zh), on the CPU; the environment V was trained on.
    vae = rnn = None
    config = sn.EnvConfig(n_humans=args.n_humans)
    needs_v = any(name in ("z", "zh") for name in args.inputs)
    try:
        if needs_v or os.path.exists(os.path.join(args.data_dir, "models", "vae.npz")):
            vae, v_sidecar = saved_models.load_vae(args.data_dir)
            config = sn.EnvConfig(
                n_humans=args.n_humans, **saved_models.observation_settings(v_sidecar)
            )
        if "zh" in args.inputs:
            rnn, _ = saved_models.load_rnn(args.data_dir, args.mode, vae.z_size)
    except saved_models.CheckpointError as e:
        cli.fail(f"{e} (inputs pixels and state need no models)")
    if "pixels" in args.inputs and config.image_size % args.pool:
        cli.fail(f"--pool must divide the frame's {config.image_size} pixels, got {args.pool}")
    cli.ensure_writable_dir(os.path.dirname(os.path.abspath(out)))
    cli.ensure_writable_dir(results_dir)
    encoder = make_encoder(vae) if needs_v else None
    test_seeds = evaluation_seeds(args.test_seed, args.test_episodes)

    # FIT AND TEST: one C per input.
    results = {}
    for name in args.inputs:
        m = rnn if name == "zh" else None  # M only for the input that reads h
        z_size = vae.z_size if vae is not None else 0
        size = cp.input_size(
            name, z_size, 0 if m is None else m.hidden_size, config.image_size, args.pool
        )
        history = []
        total = args.iterations * args.episodes
        with tqdm(total=total, desc=f"{name}: DAgger", unit="ep", leave=False) as bar:

            def iteration(k, summary, steps, history=history):
                history.append(
                    {"iteration": k, "driver": "teacher" if k == 0 else "C", "steps": steps}
                    | {f"{r}_rate": summary[f"{r}_rate"] for r in ("success", "collision")}
                )

            weights, biases = cp.imitate(
                name,
                encoder,
                m,
                args.teacher,
                config,
                args.seed,
                args.iterations,
                args.episodes,
                image_size=config.image_size,
                pool=args.pool,
                on_iteration=iteration,
                on_episode=lambda ep: bar.update(1),
                z_size=z_size,
            )
        n = min(args.n_envs, args.test_episodes)
        policy = cp.InputController(n, name, encoder, m, weights, biases, args.pool)
        with tqdm(total=args.test_episodes, desc=f"{name}: test", unit="ep", leave=False) as bar:
            summary, _ = evaluate(policy, test_seeds, config, n, progress=bar)
        results[name] = {"size": size, "test": summary, "dagger": history}
        print(
            f"{LABELS[name]}: {summary['success_rate']:.1%} success, "
            f"{summary['collision_rate']:.1%} collisions"
        )

    # REPORT
    text = table(results, args.teacher)
    print(text)
    report = manifest.make(
        script="diagnostics/probe_controller.py", args=vars(args), results=results
    )
    stem = manifest.write_report(out, report, text)
    figure(stem + ".png", results, args.teacher, args.test_episodes, args.pool)
    print(f"wrote {out}, .md and .png")


if __name__ == "__main__":
    main()
