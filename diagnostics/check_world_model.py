"""Checks M as a simulator: does its dream stay true, foresee collisions, rank controllers?

On 02's held-out episodes (data/rnn_data/test, or --held-out's), each figure beside its
baselines (the collision AUC and Spearman with 90 % bootstrap intervals):
- next z: M's NLL per latent dimension, against the copy baseline z_{t+1} ~ N(z_t, σ)
  (z drawn from V's posterior, or V's means for an M trained with 04 --z-source mean, as
  04 trains and scores it);
- k-step open loop (k = 1, 5, 10): from every step M dreams k steps on its own samples
  (--temperature) under the real actions; a linear probe fitted on real z of --probe-episodes
  training episodes reads the goal's bearing and distance and the nearest person's
  position from the dreamed z (R²), and from the real z of that frame (the ceiling), the
  last real z copied, z at constant velocity, and (a map M) the last real z moved by the
  actions' ego-motion alone (lib/diagnostics/open_loop.py); and each z's mean squared
  error against the real z. The true state comes from replaying each episode in the
  simulator from its seed and actions;
- its reward head's MSE, done and "this step is a collision" precision and recall;
- "a collision within --horizon steps", forecast from --samples open-loop samples per
  step: AUC, and precision and recall at --risk-threshold (the look-ahead planner's); the
  same with M's heads reading the copied, constant-velocity or ego-motion-warped z
  instead of its samples,
  and reading the real future z (the ceiling: what these heads make of a perfect dream);
- with a pixel mover (data/models/mover.npz, 04b_train_mover.py), the same open-loop and
  collision figures for its dream: the real frames t - 1 and t moved by the real actions
  and the people's velocity, read by V ("pixel mover" rows);
- whole episodes: from each episode's first frame M dreams as many steps as it had,
  under its real actions; the probability the dream gives the way it really ended
  (anywhere, and in its last 6 steps), and the dream's endings per kind of real ending.
Then --controllers controllers are played in M's dream (and with a mover in the pixel
dream, lib/control/pixel_dream.py) and in the real environment: 07's trained Cs for this
M (controller, controller_dream, controller_pixel; --trained), random ones, and
perturbations of the trained ones; Spearman's rank correlation between their dream and
real fitness, and for the trained Cs how their dreams and their real episodes end.

Reads:
    data/models/vae.npz, rnn_<mode>.npz (with reward and done heads) and, if present,
        controller.npz and controller_dream.npz, and mover.npz; data/rnn_data/train and
        test (through V's latent cache; the files' seeds for the replay; the test
        episodes' frames for the mover).
Writes:
    data/results/world_model_<mode>.json (--out): every figure above.
    data/results/world_model_<mode>.md: the same as a table (also printed).
    data/results/world_model_<mode>.png: open-loop R² against k, collision forecasts,
        and dream against real fitness, one dot per controller (in M's dream, and with a
        mover in the pixel dream).
    data/results/world_model_<mode>_pixel_dream.gif (with a mover and --controllers):
        the first controller's first pixel dream, the frames its C sees.
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
from lib.control import lookahead_planner, pixel_dream
from lib.control.agent import ENDINGS, WorldModelsAgent, dream_rollouts
from lib.control.fitness import dream_start_episodes, dream_starts
from lib.data import latents, rnn_data
from lib.diagnostics import open_loop as ol
from lib.diagnostics import world_model as wm
from lib.diagnostics.probe import ProbeError, auc
from lib.env import socnavenv as sn
from lib.env.rollouts import run_episodes
from lib.models import pixel_mover, saved_models
from lib.seeding import derive_seeds


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    nonneg, pos = cli.non_negative_float, cli.positive_int
    p.add_argument(
        "--mode", choices=("dream", "reward"), default="dream", help="which M (rnn_<mode>)"
    )
    cli.add_temperature_arg(p, "M's samples")
    p.add_argument("--horizon", type=pos, default=wm.COLLISION_HORIZON, help="collision forecast")
    p.add_argument(
        "--samples", type=pos, default=4, help="M's open-loop samples per step (collision risk)"
    )
    p.add_argument(
        "--risk-threshold",
        type=nonneg,
        default=lookahead_planner.THRESHOLD,
        help="collision risk above which a forecast counts as a collision (precision, recall); "
        "the look-ahead planner's threshold by default",
    )
    p.add_argument(
        "--probe-episodes",
        type=pos,
        default=300,
        help="training episodes the open-loop probe is fitted on (real z)",
    )
    p.add_argument(
        "--controllers",
        type=cli.non_negative_int,
        default=16,
        help="controllers played in the dream and the real room; 0: skip",
    )
    p.add_argument(
        "--trained",
        nargs="+",
        metavar="NAME",
        type=cli.file_stem,
        default=list(wm.TRAINED_CONTROLLERS),
        help="07's Cs (models/NAME.npz, e.g. 07 --name's) that head the controller set, "
        "with their perturbations; those missing or trained with another V or M are "
        "skipped",
    )
    p.add_argument("--episodes", type=pos, default=32, help="real episodes and dreams each")
    p.add_argument(
        "--held-out",
        metavar="DIR",
        help="score the test episodes of this 02 data folder (DIR/rnn_data/test) instead of "
        "<data-dir>'s own: a larger held-out set gives tighter intervals, e.g. DIR made by "
        "02_generate_rnn_data.py --episodes 1 --testepisodes 500 --seed 7 --data-dir DIR "
        "(its room and view must be the training data's)",
    )
    p.add_argument(
        "--bootstrap",
        type=cli.non_negative_int,
        default=1000,
        help="bootstrap draws for the 90%% intervals of the collision AUC (episodes "
        "resampled) and of Spearman (controllers resampled); 0: no intervals",
    )
    cli.add_n_envs_arg(p, "real episodes")
    cli.add_out_arg(p, "world_model_<mode>.json")
    cli.add_common_args(p)
    args = p.parse_args(argv)
    if args.risk_threshold > 1:
        p.error(f"argument --risk-threshold: must be <= 1, got {args.risk_threshold}")
    return args


def real_returns(vae, rnn, params, seeds, config, n_envs, progress):
    """Each controller over the same episodes: (P,) mean real return, and (P, 4) the
    fraction of its episodes that ended in each of `ENDINGS`."""
    e = len(seeds)
    every = np.tile(seeds, len(params))
    agent = WorldModelsAgent(min(n_envs, len(every)), vae, rnn, params, lambda k: k // e)
    returns = np.zeros(len(every))
    ends = np.zeros((len(every), len(ENDINGS)))

    def finished(ep):
        returns[ep.index] = ep.ret
        ends[ep.index, ENDINGS.index(ep.outcome)] = 1.0
        progress.update(1)

    run_episodes(agent, every, config, n_envs, finished)
    return (
        returns.reshape(len(params), e).mean(axis=1),
        ends.reshape(len(params), e, len(ENDINGS)).mean(axis=1),
    )


def _endings(fractions: dict) -> str:
    return " / ".join(f"{fractions[k]:.0%}" for k in ENDINGS)


def _f(x, fmt=".2f"):
    return "–" if x is None else format(x, fmt)


def _interval(interval, fmt=".3f") -> str:
    """ " [low, high]" (the 90 % bootstrap interval), or nothing when there is none."""
    return "" if not interval else f" [{interval[0]:{fmt}}, {interval[1]:{fmt}}]"


def table(r: dict) -> str:
    def pr(x):
        return (
            f"precision {_f(x['precision'])}, recall {_f(x['recall'])} "
            f"({x['actual']} real, {x['predicted']} predicted)"
        )

    lines = [
        "| check | M | reference |",
        "|---|---|---|",
        f"| next-z NLL per dim (nats) | {r['nll']:.3f} | copy baseline {r['copy_baseline_nll']:.3f} |",
    ]
    if "test_episodes" in r:
        lines.insert(2, f"| held-out episodes | {r['test_episodes']} | {r['held_out']}/test |")
    for k, row in r.get("open_loop", {}).items():
        warp, mover = "warp" in row, "mover" in row
        for group, name in (("goal_bearing", "goal bearing"), ("person_position", "person position"),
                            ("goal_distance", "goal distance")):  # fmt: skip
            lines.append(
                f"| {k}-step open loop: probe R², {name} | dream {_f(row['dream'][group])} "
                f"({_f(row['relative'][group])} of real z) | real z {_f(row['real'][group])}, "
                f"copy {_f(row['copy'][group])}, const. velocity {_f(row['velocity'][group])}"
                + (f", ego-motion warp {_f(row['warp'][group])}" if warp else "")
                + (f", pixel mover {_f(row['mover'][group])}" if mover else "")
                + " |"
            )
        mse = row.get("z_mse")
        if mse:
            lines.append(
                f"| {k}-step open loop: z's mean squared error | dream {mse['dream']:.4f} | "
                f"copy {mse['copy']:.4f}, const. velocity {mse['velocity']:.4f}"
                + (f", ego-motion warp {mse['warp']:.4f}" if warp else "")
                + (f", pixel mover {mse['mover']:.4f}" if mover else "")
                + " |"
            )
    c = r["collision_soon_auc"]
    lines += [
        f"| reward MSE | {r['reward_mse']:.2e} | mean reward {r['reward_mse_of_the_mean']:.2e} |",
        f"| done | {pr(r['done'])} | |",
        f"| collision (this step) | {pr(r['collision_step'])} | |",
        (
            f"| collision within {r['horizon']} steps: AUC ({r['samples']} samples) | "
            f"{_f(c['dream'], '.3f')}{_interval(r.get('collision_soon_auc_interval'))} | "
            f"heads on copied z {_f(c['copy'], '.3f')}, on "
            f"const.-velocity z {_f(c['velocity'], '.3f')}"
            + (
                f", on ego-motion-warped z {_f(c['warp'], '.3f')}"
                if c.get("warp") is not None
                else ""
            )
            + (
                f", on the pixel mover's z {_f(c['mover'], '.3f')}"
                if c.get("mover") is not None
                else ""
            )
            + "; on the real future z (ceiling) "
            f"{_f(c.get('real'), '.3f')} |"
        ),
    ]
    lead = r.get("collision_soon_auc_by_lead")
    if lead:
        at = " / ".join(_f(lead[k - 1], ".3f") for k in (1, 5, r["horizon"]) if k <= len(lead))
        lines.append(
            f"| … AUC of the steps 1 / 5 / {r['horizon']} before their collision (against the "
            f"steps with none within {r['horizon']}) | {at} | |"
        )
    lines.append(
        f"| collision within {r['horizon']} steps: risk > {r['risk_threshold']:g} | "
        f"{pr(r['collision_soon'])} | |"
    )
    cal = r.get("collision_soon_calibration")
    if cal:
        lines.append(
            f"| … calibration: Brier score; mean risk against the frequency; ECE (10 bins) | "
            f"{cal['brier']:.4f}; {cal['mean_risk']:.3f} against {cal['frequency']:.3f}; "
            f"{cal['ece']:.3f} | Brier of the base rate {cal['base_rate_brier']:.4f} |"
        )
    if "episode_endings" in r:
        e = r["episode_endings"]
        lines.append(
            f"| whole episodes under the real actions: P(the real ending) | "
            f"{e['real_ending']:.2f} (in its last 6 steps {e['real_ending_on_time']:.2f}) | 1 |"
        )
        for kind, row in e["by_real_ending"].items():
            lines.append(
                f"| … episodes that ended in {kind} ({row['episodes']}): the dream's "
                f"endings (success / collision / out of map / still running) | "
                f"{_endings(row['dream'])} | |"
            )
    for key, name in (("dream_vs_real", "dream"), ("pixel_dream_vs_real", "pixel dream")):
        if key not in r:
            continue
        d = r[key]
        lines.append(
            f"| {name} vs real fitness ({len(d['dream'])} controllers) | Spearman "
            f"{d['spearman']:+.2f}{_interval(d.get('spearman_interval'), '+.2f')} | "
            f"{name} mean {np.mean(d['dream']):+.2f}, real mean {np.mean(d['real']):+.2f} |"
        )
        for t in d["trained"]:
            lines.append(
                f"| {t['label']}: mean return | {name} {t['dream']:+.3f} | real {t['real']:+.3f} |"
            )
            if "dream_endings" in t and "real_endings" in t:
                lines.append(
                    f"| {t['label']}: endings (success / collision / out of map / timeout) | "
                    f"{name} {_endings(t['dream_endings'])} | real {_endings(t['real_endings'])} |"
                )
    return "\n".join(lines)


def figure(path: str, r: dict) -> None:
    # the last panels: dream against real fitness, in M's dream and in the pixel dream
    fitness = [
        (key, title) for key, title in (("dream_vs_real", "M's dream"), ("pixel_dream_vs_real", "the pixel dream"))
        if key in r
    ]  # fmt: skip
    panels = 3 + len(fitness)
    fig, axes = plt.subplots(1, panels, figsize=(4.75 * panels, 4.5))
    ks = [int(k) for k in r["open_loop"]]
    styles = {"real": ("k", "-"), "dream": ("tab:red", "-"), "copy": ("tab:gray", "--"),
              "velocity": ("tab:blue", ":"), "warp": ("tab:green", "-."),
              "mover": ("tab:purple", "-")}  # fmt: skip
    for ax, (group, title) in zip(
        axes[:2], (("goal_bearing", "goal's bearing"), ("person_position", "nearest person"))
    ):
        for source, (color, ls) in styles.items():
            if source not in next(iter(r["open_loop"].values())):
                continue  # "warp": map Ms only; "mover": with a mover
            vals = [r["open_loop"][k][source][group] for k in r["open_loop"]]
            vals = [np.nan if v is None else max(v, -1.0) for v in vals]
            label = {"real": "real z (ceiling)", "dream": "M's dream", "copy": "copy last z",
                     "velocity": "constant velocity", "warp": "ego-motion warp",
                     "mover": "pixel mover"}[source]  # fmt: skip
            ax.plot(ks, vals, color=color, ls=ls, marker="o", label=label)
        ax.set_xticks(ks)
        ax.set_xlabel("open-loop steps k")
        ax.set_ylabel("probe R² (fitted on real z)")
        ax.set_ylim(-1.0, 1.0)  # R² below -1 (worse than the mean, far) sits on the edge
        ax.set_title(f"{title} read from z at t + k\n(R² < -1 drawn at -1)")
        ax.legend(fontsize=8)
    ax = axes[2]
    c = r["collision_soon_auc"]
    lead = r.get("collision_soon_auc_by_lead") or []
    leads = [k + 1 for k, v in enumerate(lead) if v is not None]
    ax.plot(leads, [lead[k - 1] for k in leads], "o-", color="tab:red",
            label="M's samples, by steps to the collision")  # fmt: skip
    for name, color, text in (("dream", "tab:red", "M's samples, all"),
                              ("copy", "tab:gray", "M's heads, copied z"),
                              ("velocity", "tab:blue", "M's heads, const. vel. z"),
                              ("warp", "tab:green", "M's heads, ego-warped z"),
                              ("mover", "tab:purple", "M's heads, pixel mover's z"),
                              ("real", "k", "M's heads, real future z")):  # fmt: skip
        if c.get(name) is not None:
            ax.axhline(c[name], color=color, lw=1, ls="--", label=f"{text}: {c[name]:.3f}")
    ax.axhline(0.97, color="k", lw=0.8, ls=":", label="0.97")
    ax.set_ylim(0.5, 1.0)
    ax.set_xlabel("steps before the collision")
    ax.set_ylabel("AUC against steps with no collision")
    ax.legend(fontsize=7, loc="lower left")
    p, q = r["collision_soon"]["precision"], r["collision_soon"]["recall"]
    ax.set_title(
        f"collision within {r['horizon']} steps\nrisk > {r['risk_threshold']:g}: precision "
        f"{_f(p)}, recall {_f(q)}"
    )
    for ax, (key, where) in zip(axes[3:], fitness):
        d = r[key]
        n = len(d["trained"])
        ax.scatter(d["real"][n:], d["dream"][n:], c="tab:blue", label="random and perturbed")
        ax.scatter(d["real"][:n], d["dream"][:n], c="tab:red", label="07's trained Cs")
        lo = min(min(d["real"]), min(d["dream"])) - 0.1
        hi = max(max(d["real"]), max(d["dream"])) + 0.1
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="dream = real")
        ax.set_xlabel("real fitness (mean return)")
        ax.set_ylabel(f"dream fitness (mean return in {where})")
        ax.set_title(f"Same Cs in {where} and the room:\nSpearman {d['spearman']:+.2f}")
        ax.legend(fontsize=8)
    fig.suptitle(
        f"M as a simulator, {r.get('test_episodes', '')} held-out episodes (NLL {r['nll']:.2f}, "
        f"copy {r['copy_baseline_nll']:.2f})"
    )
    fig.tight_layout()
    drawing.save_figure(fig, path, dpi=80)


def load_episodes(args, vae):
    """02's train and test episodes through V's latent cache, and the env they came from."""
    vae_path = os.path.join(args.data_dir, "models", "vae.npz")
    root, test_root = rnn_roots(args)
    env = (manifest.read_json(os.path.join(root, "manifest.json")) or {}).get("identity", {})
    if test_root != root:
        other = manifest.read_json(os.path.join(test_root, "manifest.json"))
        if other is None:
            cli.fail(f"--held-out: no 02 data in {test_root} — run 02_generate_rnn_data.py there")
        if other.get("identity", {}).get("env") != env.get("env"):
            cli.fail(
                f"--held-out: {test_root}'s room or view differs from {root}'s — make it with "
                "the training data's 02 settings"
            )
    try:
        train, _ = latents.encode_split(os.path.join(root, "train"), vae, vae_path)
        test, _ = latents.encode_split(os.path.join(test_root, "test"), vae, vae_path)
    except latents.NoEpisodesError as e:
        cli.fail(f"{e} — run 02_generate_rnn_data.py first")
    return train, test, sn.EnvConfig(**env.get("env", {}))


def rnn_roots(args):
    """The 02 folders of the training episodes and of the scored held-out episodes."""
    root = os.path.join(args.data_dir, "rnn_data")
    return root, os.path.join(args.held_out, "rnn_data") if args.held_out else root


def probe_fidelity(args, rnn, train, test, forced, config, rng, mover=None):
    """Open-loop fidelity (lib/diagnostics/open_loop.py), the probe fitted on real z."""
    root, test_root = rnn_roots(args)
    fit = train.first(args.probe_episodes)
    try:
        truth_fit = ol.replay_quantities(fit, ol.episode_seeds(f"{root}/train", fit), config)
        truth = ol.replay_quantities(test, ol.episode_seeds(f"{test_root}/test", test), config)
        frames = np.repeat(np.arange(len(fit)), fit.lengths + 1)
        probe = ol.Probe(fit.mu, truth_fit, frames)
    except (ol.ReplayError, ProbeError) as e:
        cli.fail(str(e))
    dreams = ol.open_loop(rnn, test, forced, rng, args.temperature)
    return ol.fidelity(probe, test, truth, dreams, getattr(rnn, "offsets", None), mover)


def load_mover(args, vae, test):
    """The pixel mover's dream of the test episodes (`pixel_mover.LatentDream`), or None
    without data/models/mover.npz."""
    try:
        mover = saved_models.load_mover(args.data_dir)
    except saved_models.CheckpointError as e:
        cli.fail(str(e))
    if mover is None:
        return None
    _, test_root = rnn_roots(args)
    frames = []
    for name in test.files:
        with np.load(os.path.join(test_root, "test", name), allow_pickle=False) as f:
            frames.append(f["obs"])
    frames = np.concatenate(frames)
    if frames.shape[0] != len(test.mu) or frames.shape[1] != mover.image_size:
        cli.fail(f"the test episodes' frames do not match V's latents or the mover's size "
                 f"({frames.shape}) — rerun 04b_train_mover.py on this data")  # fmt: skip
    return pixel_mover.LatentDream(mover, vae, frames)


def main(argv=None):
    args = parse_args(argv)
    _, out = cli.results_paths(args, f"world_model_{args.mode}.json")
    print(f"check: M ({args.mode}) in {args.data_dir}/models on held-out episodes -> {out}")

    # INPUTS: V and M on the CPU, and 02's episodes through V's latent cache.
    try:
        vae, v_sidecar = saved_models.load_vae(args.data_dir)
        rnn, r_sidecar = saved_models.load_rnn(args.data_dir, args.mode, vae.z_size)
    except saved_models.CheckpointError as e:
        cli.fail(str(e))
    if not rnn.can_dream:
        cli.fail(f"rnn_{args.mode}.npz has no reward and done heads — train M with --mode dream")
    train, test, env_config = load_episodes(args, vae)
    cli.ensure_writable_dir(os.path.dirname(os.path.abspath(out)))
    weight = saved_models.done_pos_weight(r_sidecar)
    rng = np.random.default_rng([args.seed, 0x3C])

    # M ON REAL EPISODES: its NLL on the z it was trained on (V's posterior draws or
    # means), as 04 scores it; its heads and states on V's means, as the agent runs it.
    source = saved_models.z_source(r_sidecar)
    z_train, z_test = (
        rnn_data.latents_for(d, source, np.random.default_rng([args.seed, k]))
        for k, d in enumerate((train, test))
    )
    nll = wm.teacher_forced(rnn, test, weight, z_test)["nll"]
    forced = wm.teacher_forced(rnn, test, weight)
    result = wm.head_scores(test, forced)
    result["nll"] = float(np.mean(nll))
    result["copy_baseline_nll"] = wm.copy_baseline_nll(train, z_train, test, z_test)

    # OPEN LOOP: the probe reads the dreamed z k steps ahead, beside the baselines' z.
    mover = load_mover(args, vae, test)
    result["open_loop"] = probe_fidelity(args, rnn, train, test, forced, env_config, rng, mover)

    # COLLISIONS WITHIN THE HORIZON: from M's own samples, and from its heads reading
    # the baselines' z.
    soon = wm.actual_collision_soon(test, args.horizon)
    both = 0 < soon.sum() < len(soon)
    aucs = {}
    for source in wm.FORECAST_SOURCES:
        if source == "warp" and getattr(rnn, "offsets", None) is None:
            continue  # a dense M: no map to warp
        if source == "mover" and mover is None:
            continue
        _, risk = wm.forecast_collisions(
            rnn, test, forced, rng, args.temperature, args.horizon, weight,
            samples=args.samples if source == "dream" else 1, source=source, mover=mover,
        )  # fmt: skip
        aucs[source] = auc(risk, soon) if both else None
        if source == "dream":
            result["collision_soon"] = wm.rates(risk > args.risk_threshold, soon)
            result["collision_soon_auc_by_lead"] = wm.auc_by_lead(
                risk, soon, test.lengths, args.horizon
            )
            result["collision_soon_calibration"] = wm.calibration(risk, soon)
            if both and args.bootstrap and len(test) > 1:
                result["collision_soon_auc_interval"] = wm.episode_auc_interval(
                    risk, soon, test.lengths, np.random.default_rng([args.seed, 0xB0]),
                    rounds=args.bootstrap,
                )  # fmt: skip
    result["collision_soon_auc"] = aucs

    # WHOLE EPISODES: does the dream, under the real actions, end as each episode did?
    endings = wm.episode_endings(rnn, test, rng, args.temperature, weight)
    result["episode_endings"] = wm.episode_ending_scores(endings)
    result.update(
        horizon=args.horizon, temperature=args.temperature, samples=args.samples,
        risk_threshold=args.risk_threshold, test_steps=len(soon), test_episodes=len(test),
        held_out=rnn_roots(args)[1],
    )  # fmt: skip

    # THE SAME CONTROLLERS IN THE DREAM AND IN THE REAL ENVIRONMENT
    if args.controllers:
        params, labels, trained = wm.controller_set(
            args.data_dir, args.mode, args.controllers, rnn.z_size, rnn.hidden_size,
            np.random.default_rng([args.seed, 0xC7]),  # the same set whatever came before
            names=args.trained,
        )  # fmt: skip
        first = test.frame_offsets[:-1]
        z0 = dream_starts(args.seed, 0, args.episodes, test.mu[first], test.logvar[first], source)
        which = np.repeat(np.arange(len(params)), args.episodes)
        dream, _, dream_ends = dream_rollouts(
            rnn, params, which, np.tile(z0, (len(params), 1)), args.temperature, rng,
            done_pos_weight=weight, endings=True,
        )  # fmt: skip
        if mover is not None:  # the same controllers in the mover's dream
            episodes = dream_start_episodes(args.seed, 0, args.episodes, len(test))
            two = pixel_dream.first_two_frames(mover.frames, test)
            starts = pixel_dream.episode_starts(two, test, np.tile(episodes, len(params)))
            shown = []  # the first controller's first dream, as its C sees it

            def seen(rows, frames):
                bar.update(1)
                if rows[0] == 0:
                    shown.append(frames[0])

            with tqdm(total=sn.MAX_STEPS, desc="pixel dream", unit="step", leave=False) as bar:
                pixel, _, pixel_ends = pixel_dream.pixel_dream_rollouts(
                    rnn, mover.mover, vae, params, which, starts, done_pos_weight=weight,
                    endings=True, encoder=mover.encoder, on_frame=seen,
                )  # fmt: skip
        seeds = derive_seeds(args.seed, "world-model-check", args.episodes)
        with tqdm(total=len(params) * args.episodes, desc="real", unit="ep", leave=False) as bar:
            config = sn.EnvConfig(**saved_models.observation_settings(v_sidecar))
            real, real_ends = real_returns(vae, rnn, params, seeds, config, args.n_envs, bar)
        dream = dream.reshape(len(params), args.episodes).mean(axis=1)
        dream_ends = dream_ends.reshape(len(params), args.episodes, len(ENDINGS)).mean(axis=1)
        result["dream_vs_real"] = wm.dream_vs_real(
            dream, real, labels, trained, dream_ends, real_ends
        )
        if mover is not None:
            result["pixel_dream_vs_real"] = wm.dream_vs_real(
                pixel.reshape(len(params), args.episodes).mean(axis=1), real, labels, trained,
                pixel_ends.reshape(len(params), args.episodes, len(ENDINGS)).mean(axis=1),
                real_ends,
            )  # fmt: skip
        for key in ("dream_vs_real", "pixel_dream_vs_real"):
            if key in result and args.bootstrap and len(params) > 1:
                d = result[key]
                d["spearman_interval"] = wm.spearman_interval(
                    np.array(d["dream"]), real, np.random.default_rng([args.seed, 0xB1]),
                    rounds=args.bootstrap,
                )  # fmt: skip

    # REPORT
    text = table(result)
    print(text)
    stem = manifest.write_report(
        out, manifest.make("diagnostics/check_world_model.py", vars(args), results=result), text
    )
    figure(stem + ".png", result)
    if args.controllers and mover is not None:
        title = f"pixel dream: {labels[0]}"
        frames = [drawing.caption(drawing.upscale(f, 4), f"{title}, step {t + 1}")
                  for t, f in enumerate(shown)]  # fmt: skip
        drawing.save_gif(stem + "_pixel_dream.gif", frames, fps=8)
    print(f"wrote {out}, .md and .png")


if __name__ == "__main__":
    main()
