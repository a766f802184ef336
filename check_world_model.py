"""Checks M as a simulator: is what a dream-trained C learns from it true of the real task?

On 02's held-out episodes (data/rnn_data/test), M reads the real frames' z and actions:
- its NLL of the next z per latent dimension, against the copy baseline z_{t+1} ~ N(z_t, σ)
  (z drawn from V's posterior, as 04 trains and scores M);
- its reward head's MSE, against always predicting the mean reward;
- its done head's precision and recall, and those of "this step is a collision";
- "a collision within --horizon steps": from every step, M runs open loop on its own
  samples (--temperature) with the real actions, and its forecast is scored.
Then the same controllers are played in M's dream and in the real environment: their
fitness in each, and Spearman's rank correlation between the two. The controllers are
07's trained C (if it was trained with this M) and perturbations of it at growing scales
(or random controllers without one).

Reads:
    data/models/vae.npz, rnn_<mode>.npz (with reward and done heads) and, if present,
        controller.npz; data/rnn_data/train and test (through V's latent cache).
Writes:
    data/results/world_model_<mode>.json (--out): every figure above.
    data/results/world_model_<mode>.md: the same as a table (also printed).
    data/results/world_model_<mode>.png: dream against real fitness, one dot per
        controller, and the heads' precision and recall.
"""

import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import os

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import numpy as np
from tqdm import tqdm

from lib import cli, manifest
from lib.control.agent import WorldModelsAgent, dream_rollouts
from lib.control.fitness import dream_starts
from lib.data import latents, rnn_data
from lib.diagnostics import world_model as wm
from lib.diagnostics.probe import auc
from lib.env import socnavenv as sn
from lib.env.rollouts import run_episodes
from lib.fileio import atomic_path
from lib.models import checkpoints
from lib.models.controller import n_params
from lib.seeding import derive_seeds


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    nonneg, pos = cli.non_negative_float, cli.positive_int
    p.add_argument(
        "--mode", choices=("dream", "reward"), default="dream", help="which M (rnn_<mode>)"
    )
    p.add_argument("--temperature", type=nonneg, default=1.0, help="tau of M's samples")
    p.add_argument("--horizon", type=pos, default=wm.COLLISION_HORIZON, help="collision forecast")
    p.add_argument(
        "--controllers", type=cli.non_negative_int, default=8, help="dream vs real; 0: skip"
    )
    p.add_argument("--episodes", type=pos, default=32, help="real episodes and dreams each")
    cli.add_n_envs_arg(p, "real episodes")
    cli.add_out_arg(p, "world_model_<mode>.json")
    cli.add_common_args(p)
    return p.parse_args(argv)


def controllers(data_dir, mode, count, z_size, hidden_size, rng):
    """(count, n_params) controllers: 07's C (when trained with this M) and perturbations
    of it at scales from 0.1 to 2 times its weights' spread; random ones without it."""
    size = n_params(z_size, hidden_size)
    base, name = np.zeros(size, np.float32), "random"
    try:
        c, sidecar = checkpoints.load_controller(data_dir)
        if sidecar.get("rnn_mode") == mode and c.size == size:
            base, name = c.get_flat().astype(np.float32), "07's C"
    except checkpoints.CheckpointError:
        pass
    spread = float(base.std()) or 0.5
    scales = np.geomspace(0.1, 2.0, max(count - 1, 1)) * spread
    noise = rng.standard_normal((len(scales), size)).astype(np.float32)
    params = np.concatenate([base[None], base + scales[:, None] * noise])[:count]
    labels = [name] + [f"{name} + {s / spread:.2g}σ" for s in scales][: count - 1]
    return params, labels


def real_returns(vae, rnn, params, seeds, config, n_envs, progress):
    """(P,) mean real return of each controller over the same episodes."""
    e = len(seeds)
    every = np.tile(seeds, len(params))
    agent = WorldModelsAgent(min(n_envs, len(every)), vae, rnn, params, lambda k: k // e)
    returns = np.zeros(len(every))

    def finished(ep):
        returns[ep.index] = ep.ret
        progress.update(1)

    run_episodes(agent, every, config, n_envs, finished)
    return returns.reshape(len(params), e).mean(axis=1)


def table(r: dict) -> str:
    def pr(x):
        p = "–" if x["precision"] is None else f"{x['precision']:.2f}"
        q = "–" if x["recall"] is None else f"{x['recall']:.2f}"
        return f"precision {p}, recall {q} ({x['actual']} real, {x['predicted']} predicted)"

    auc_text = "–" if r.get("collision_soon_auc") is None else f"{r['collision_soon_auc']:.2f}"
    lines = [
        "| check | M | reference |",
        "|---|---|---|",
        f"| next-z NLL per dim (nats) | {r['nll']:.3f} | copy baseline {r['copy_baseline_nll']:.3f} |",
        f"| reward MSE | {r['reward_mse']:.2e} | mean reward {r['reward_mse_of_the_mean']:.2e} |",
        f"| done | {pr(r['done'])} | |",
        f"| collision (this step) | {pr(r['collision_step'])} | |",
        f"| collision within {r['horizon']} steps | {pr(r['collision_soon'])} | AUC of M's risk {auc_text} |",
    ]
    if "dream_vs_real" in r:
        d = r["dream_vs_real"]
        lines.append(
            f"| dream vs real fitness ({len(d['dream'])} controllers) | dream mean "
            f"{np.mean(d['dream']):+.2f}, real mean {np.mean(d['real']):+.2f} | "
            f"Spearman {d['spearman']:+.2f} |"
        )
    return "\n".join(lines)


def figure(path: str, r: dict) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    ax = axes[0]
    names = ["done", "collision_step", "collision_soon"]
    x = np.arange(len(names))
    for k, what in enumerate(("precision", "recall")):
        vals = [r[n][what] or 0.0 for n in names]
        ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label=what)
    ax.set_xticks(x, ["done", "collision\n(this step)", f"collision within\n{r['horizon']} steps"])
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(
        f"M's heads on held-out episodes\nNLL {r['nll']:.2f} (copy {r['copy_baseline_nll']:.2f})"
    )
    ax = axes[1]
    if "dream_vs_real" in r:
        d = r["dream_vs_real"]
        ax.scatter(d["real"][1:], d["dream"][1:], c="tab:blue", label="perturbed")
        ax.scatter(d["real"][:1], d["dream"][:1], c="tab:red", label=d["labels"][0])
        lo = min(min(d["real"]), min(d["dream"])) - 0.1
        hi = max(max(d["real"]), max(d["dream"])) + 0.1
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="dream = real")
        ax.set_xlabel("real fitness (mean return)")
        ax.set_ylabel("dream fitness (mean return in M)")
        ax.set_title(f"Same controllers, dream vs real: Spearman {d['spearman']:+.2f}")
        ax.legend(fontsize=8)
    else:
        ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    results_dir = os.path.join(args.data_dir, "results")
    out = args.out or os.path.join(results_dir, f"world_model_{args.mode}.json")
    print(f"check: M ({args.mode}) in {args.data_dir}/models on held-out episodes -> {out}")

    # INPUTS: V and M on the CPU, and 02's episodes through V's latent cache.
    try:
        vae, v_sidecar = checkpoints.load_vae(args.data_dir)
        rnn, r_sidecar = checkpoints.load_rnn(args.data_dir, args.mode, vae.z_size)
    except checkpoints.CheckpointError as e:
        cli.fail(str(e))
    if not rnn.can_dream:
        cli.fail(f"rnn_{args.mode}.npz has no reward and done heads — train M with --mode dream")
    vae_path = os.path.join(args.data_dir, "models", "vae.npz")
    try:
        train, _ = latents.encode_split(
            os.path.join(args.data_dir, "rnn_data", "train"), vae, vae_path
        )
        test, _ = latents.encode_split(
            os.path.join(args.data_dir, "rnn_data", "test"), vae, vae_path
        )
    except latents.NoEpisodesError as e:
        cli.fail(f"{e} — run 02_generate_rnn_data.py first")
    cli.ensure_writable_dir(os.path.dirname(os.path.abspath(out)))
    weight = checkpoints.done_pos_weight(r_sidecar)
    rng = np.random.default_rng([args.seed, 0x3C])

    # M ON REAL EPISODES: its NLL on z drawn from V's posterior, as 04 trains and scores
    # it; its heads and states on V's means, as the agent runs it; then open-loop
    # collision forecasts from every step.
    z_train, z_test = (
        rnn_data.sample_z(d, np.random.default_rng([args.seed, k]))
        for k, d in enumerate((train, test))
    )
    nll = wm.teacher_forced(rnn, test, weight, z_test)["nll"]
    forced = wm.teacher_forced(rnn, test, weight)
    result = wm.head_scores(test, forced)
    result["nll"] = float(np.mean(nll))
    result["copy_baseline_nll"] = wm.copy_baseline_nll(train, z_train, test, z_test)
    forecast, risk = wm.forecast_collisions(
        rnn, test, forced, rng, args.temperature, args.horizon, weight
    )
    soon = wm.actual_collision_soon(test, args.horizon)
    result["collision_soon"] = wm.rates(forecast, soon)
    result["collision_soon_auc"] = auc(risk, soon) if 0 < soon.sum() < len(soon) else None
    result.update(horizon=args.horizon, temperature=args.temperature, test_steps=len(forecast))

    # THE SAME CONTROLLERS IN THE DREAM AND IN THE REAL ENVIRONMENT
    if args.controllers:
        params, labels = controllers(
            args.data_dir, args.mode, args.controllers, rnn.z_size, rnn.hidden_size, rng
        )
        first = test.frame_offsets[:-1]
        z0 = dream_starts(args.seed, 0, args.episodes, test.mu[first], test.logvar[first])
        which = np.repeat(np.arange(len(params)), args.episodes)
        dream, _ = dream_rollouts(
            rnn, params, which, np.tile(z0, (len(params), 1)), args.temperature, rng,
            done_pos_weight=weight,
        )  # fmt: skip
        seeds = derive_seeds(args.seed, "world-model-check", args.episodes)
        with tqdm(total=len(params) * args.episodes, desc="real", unit="ep", leave=False) as bar:
            config = sn.EnvConfig(**checkpoints.observation_settings(v_sidecar))
            real = real_returns(vae, rnn, params, seeds, config, args.n_envs, bar)
        dream = dream.reshape(len(params), args.episodes).mean(axis=1)
        result["dream_vs_real"] = {
            "labels": labels,
            "dream": dream.tolist(),
            "real": real.tolist(),
            "spearman": wm.spearman(dream, real),
        }

    # REPORT
    text = table(result)
    print(text)
    manifest.write_json(out, manifest.make("check_world_model.py", vars(args), results=result))
    with atomic_path(os.path.splitext(out)[0] + ".md") as tmp, open(tmp, "w") as f:
        f.write(text + "\n")
    figure(os.path.splitext(out)[0] + ".png", result)
    print(f"wrote {out}, .md and .png")


if __name__ == "__main__":
    main()
