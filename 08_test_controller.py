"""Tests the trained agent (V + M + C) against the baselines on the same episodes.

Reads:
    data/models/vae.npz, rnn_<mode>.npz (the M named in controller.json) and
        controller.npz, each with its JSON sidecar.
Writes:
    data/results/test_controller.json (--out; test_<NAME>.json with --controller
        NAME): one object per policy —
        world_models, random, greedy, greedy_avoid, oracle, and with --planner
        world_models_planner (the same V, M and C, planning in M) — with
        success / collision / out_of_map / timeout rates and their 95 % Wilson
        intervals, return mean and std, episodes, steps to goal, path length,
        closest approach to a person and personal-space compliance; the planner's
        also replaced_fraction, the fraction of steps whose action is not C's, and
        env_steps, the real steps it planned (with seconds: its speed).
    data/results/test_controller.md: the same as a Markdown table (also printed).
    data/results/test_<policy>_<k>.gif: the first --record episodes of each
        policy (global view beside the 64x64 observation). With another --out
        than the default, the GIFs are named after it: <out stem>_<policy>_<k>.gif.
    data/results/test_planner_vs_linear_<k>.gif (with --planner): the linear
        agent and the planner in the same scene, side by side.

Every policy plays the same --episodes held-out episodes (seeds from --seed),
so differences between rows are differences between policies.

--planner adds the agent that plans in M at every step (`lib.control.dream_planner`):
--candidates action sequences of --horizon steps around C's own, refined by
--cem-iters iterations of the cross-entropy method, scored by M's predicted
return; the meta object records its settings.
"""

import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import argparse
import dataclasses
import os
import time

from tqdm import tqdm

from lib import cli, devices, drawing, manifest
from lib.control import dream_planner, lookahead_planner, pixel_planner
from lib.control.agent import PlanningAgent, WorldModelsAgent
from lib.env import evaluation
from lib.env import socnavenv as sn
from lib.env.policies import make_policy
from lib.fileio import file_hash
from lib.models import saved_models
from lib.models.lookahead_heads import HORIZONS as HEAD_HORIZONS

BASELINES = ("random", "greedy", "greedy_avoid", "oracle")


CONTROLLER_HELP = (
    "which C: data/models/<name>.npz (07's --name); its row is world_models, or "
    "world_models_<suffix> for controller_<suffix>"
)


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--episodes", type=cli.positive_int, default=100, help="held-out episodes per policy"
    )
    cli.add_room_args(p, sn.N_HUMANS, sn.MAX_STEPS)
    p.add_argument(
        "--temperature",
        type=cli.non_negative_float,
        default=0.0,
        help="0: the agent's z is V's posterior mean (as in training); tau > 0 samples z "
        "from V's posterior with its std scaled by sqrt(tau)",
    )
    cli.add_out_arg(p, "test_<controller>.json: test_controller.json for the default C")
    p.add_argument(
        "--record",
        type=cli.non_negative_int,
        default=2,
        help="GIFs of the first K episodes per policy",
    )
    p.add_argument(
        "--baselines-only", action="store_true", help="skip the agent (no trained models needed)"
    )
    p.add_argument("--agent-only", action="store_true", help="skip the baselines")
    p.add_argument("--controller", type=cli.file_stem, default="controller", help=CONTROLLER_HELP)
    add_planner_args(p)
    cli.add_n_envs_arg(p)
    cli.add_gpu_arg(p)
    cli.add_common_args(p)
    args = p.parse_args(argv)
    if args.baselines_only and args.agent_only:
        p.error("--baselines-only and --agent-only exclude each other")
    check_planner_args(p, args)
    return args


PLANNERS = ("lookahead", "return", "pixels")
PLAN_WITH_HELP = (
    "with --planner, how candidate actions are judged: lookahead (default) vetoes C's action "
    "when M's look-ahead head (07b_train_lookahead.py) forecasts a collision or exit within "
    "--horizon steps of holding it, and takes the safest action near C's; return runs the "
    "cross-entropy method over action sequences imagined in M, scored by M's predicted "
    "return; pixels does the same in the pixel dream (the real frame moved by 04b's mover, "
    "read by V, scored by M's heads)"
)

HORIZON_DEFAULT = (
    f"{lookahead_planner.HORIZON} with lookahead, {dream_planner.HORIZON} with return, "
    f"{pixel_planner.HORIZON} with pixels"
)

# The planner's flags: (flag, type, default, help, the --plan-with values they belong to).
# Their defaults are filled in by `check_planner_args`, so that a flag given without
# --planner, or to the other planner, can be refused.
PLANNER_FLAGS = (
    ("--horizon", cli.positive_int, None,
     f"steps looked ahead (0.1 s each); with lookahead one of the head's horizons {HEAD_HORIZONS}",
     PLANNERS),
    ("--plan-threshold", cli.non_negative_float, lookahead_planner.THRESHOLD,
     "C's action is replaced when the head's forecast risk of holding it exceeds this, in [0, 1]",
     ("lookahead",)),
    ("--plan-grid", cli.positive_int, lookahead_planner.GRID,
     "candidate actions per axis: a G x G grid of constant actions over [-1, 1]^2 beside C's (>= 2)",
     ("lookahead",)),
    ("--plan-cost", cli.non_negative_float, lookahead_planner.COST,
     "the replacement minimises risk + this x squared distance from C's action",
     ("lookahead",)),
    ("--candidates", cli.positive_int, dream_planner.CANDIDATES,
     "action sequences per plan; candidate 0 is C's own, so 1 is the linear agent", ("return", "pixels")),
    ("--cem-iters", cli.positive_int, dream_planner.CEM_ITERS,
     "cross-entropy-method iterations per plan (1: random shooting around C)", ("return", "pixels")),
    ("--plan-sigma", cli.non_negative_float, dream_planner.SIGMA,
     "initial std of the candidates' action offsets from C's actions (actions are in [-1, 1])",
     ("return", "pixels")),
    ("--plan-tau", cli.non_negative_float, dream_planner.TAU,
     "M's temperature in the plan: 0 follows the mean of its likeliest component", ("return",)),
    ("--plan-gamma", cli.positive_float, dream_planner.GAMMA, "discount per imagined step, in (0, 1]",
     ("return", "pixels")),
    ("--plan-margin", cli.non_negative_float, dream_planner.MARGIN,
     "a plan replaces C's action only if its predicted return beats C's by more than this",
     ("return", "pixels")),
    ("--plan-elites", cli.positive_int, None,
     "best candidates each CEM iteration refits to, at most --candidates (None: candidates // 8, at least 1)",
     ("return", "pixels")),
)  # fmt: skip


def add_planner_args(p):
    p.add_argument(
        "--planner",
        action="store_true",
        help="also test the agent that plans at every step (row world_models_planner)",
    )
    p.add_argument("--plan-with", choices=PLANNERS, default=argparse.SUPPRESS, help=PLAN_WITH_HELP)
    for flag, kind, default, text, kinds in PLANNER_FLAGS:
        which = "--planner" if kinds == PLANNERS else f"--planner --plan-with {kinds[0]}"
        p.add_argument(
            flag,
            type=kind,
            default=argparse.SUPPRESS,  # absent unless given, and no "(default: None)" in --help
            help=f"with {which}: {text} (default: {HORIZON_DEFAULT if default is None else default})",
        )


def check_planner_args(p, args):
    """Refuses planner flags without --planner or for the other planner, then fills in
    their defaults."""
    if not hasattr(args, "plan_with"):
        args.plan_with = "lookahead"
    elif not args.planner:
        p.error("--plan-with needs --planner")
    for flag, _, default, _, kinds in PLANNER_FLAGS:
        key = flag.removeprefix("--").replace("-", "_")
        if not hasattr(args, key):
            setattr(args, key, default)
        elif not args.planner:
            p.error(f"{flag} needs --planner")
        elif args.plan_with not in kinds:
            p.error(f"{flag} is a flag of --plan-with {kinds[0]}, not of {args.plan_with}")
    if args.horizon is None:
        args.horizon = {"lookahead": lookahead_planner.HORIZON, "return": dream_planner.HORIZON,
                        "pixels": pixel_planner.HORIZON}[args.plan_with]  # fmt: skip
    if args.planner and args.baselines_only:
        p.error("--planner and --baselines-only exclude each other")
    if args.plan_gamma > 1:
        p.error(f"argument --plan-gamma: must be <= 1, got {args.plan_gamma}")
    if args.plan_threshold > 1:
        p.error(f"argument --plan-threshold: must be <= 1, got {args.plan_threshold}")
    if args.plan_grid < 2:
        p.error(f"argument --plan-grid: must be >= 2, got {args.plan_grid}")
    if args.plan_elites is not None and args.plan_elites > args.candidates:
        p.error(
            f"argument --plan-elites: must be <= --candidates ({args.candidates}), got {args.plan_elites}"
        )


def agent_row(name: str) -> str:
    """The table row of C `name`: world_models for 07's default, world_models_<x> otherwise."""
    return (
        "world_models"
        if name == "controller"
        else f"world_models_{name.removeprefix('controller_')}"
    )


def table(results: dict) -> str:
    lines = [
        "| policy | success | collision | out of map | timeout | return | steps to goal | closest person (m) | personal space |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in results.items():
        lo, hi = s["success_rate_ci95"]
        steps = f"{s['steps_to_goal_mean']:.0f}" if s["steps_to_goal_mean"] else "–"
        closest = (
            f"{s['min_human_distance_mean']:.2f}"
            if s["min_human_distance_mean"] is not None
            else "–"
        )
        lines.append(
            f"| {name} | {s['success_rate']:.1%} [{lo:.0%}, {hi:.0%}] | {s['collision_rate']:.1%} | "
            f"{s['out_of_map_rate']:.1%} | {s['timeout_rate']:.1%} | {s['return_mean']:+.2f} ± {s['return_std']:.2f} | "
            f"{steps} | {closest} | {s['personal_space_compliance']:.1%} |"
        )
    return "\n".join(lines)


def agent_policies(args, config, linear):
    """The agent's policies (V + the M C was trained with + C; with --planner, the
    planner too), by row name, each built for n slots; the environment settings V was
    trained with; and the planner's settings (None without --planner)."""
    policies, settings = {}, None
    try:
        device = devices.select_device(args.gpu)
        controller, c_sidecar, vae, v_sidecar, rnn, r_sidecar = saved_models.load_agent(
            args.data_dir, args.controller, device
        )
        config = dataclasses.replace(config, **saved_models.observation_settings(v_sidecar))
    except (devices.DeviceUnavailable, saved_models.CheckpointError) as e:
        cli.fail(f"{e} (or pass --baselines-only)")
    params = controller.get_flat()[None]
    policies[linear] = lambda n: WorldModelsAgent(n, vae, rnn, params, temperature=args.temperature)
    if args.planner and args.plan_with == "lookahead":
        try:
            head, h_sidecar = saved_models.load_lookahead(args.data_dir, rnn, device)
        except saved_models.CheckpointError as e:
            cli.fail(f"{e} (or pass --plan-with return)")
        if h_sidecar.get("identity", {}).get("controller_sha1") != file_hash(
            os.path.join(args.data_dir, "models", f"{args.controller}.npz")
        ):
            print(
                f"note: lookahead.npz was trained on another C's states than {args.controller}.npz "
                "(re-run 07b_train_lookahead.py for this C)"
            )
        try:
            settings = lookahead_planner.LookaheadSettings(
                args.plan_grid, args.plan_threshold, args.plan_cost, args.horizon
            )
            head.horizon_index(args.horizon)
        except ValueError as e:
            cli.fail(
                f"argument --horizon: {e} (pass one of those, or retrain it with 07b_train_lookahead.py)"
            )
        policies[linear + "_planner"] = lambda n: lookahead_planner.LookaheadPlanner(
            n, vae, rnn, params, head, settings, temperature=args.temperature
        )
    elif args.planner:
        if not rnn.can_dream:
            cli.fail(
                f"--planner needs an M with reward and done heads, and rnn_{c_sidecar['rnn_mode']}.npz has none — train one with 04_train_rnn.py --mode dream"
            )
        settings = dream_planner.PlanSettings(
            horizon=args.horizon,
            candidates=args.candidates,
            cem_iters=args.cem_iters,
            sigma=args.plan_sigma,
            tau=args.plan_tau,
            gamma=args.plan_gamma,
            margin=args.plan_margin,
            elites=args.plan_elites,
            done_pos_weight=saved_models.done_pos_weight(r_sidecar),
        )
        if args.plan_with == "pixels":
            try:
                mover = saved_models.mover_for(
                    args.data_dir, config.image_size, "--plan-with pixels"
                )
            except saved_models.CheckpointError as e:
                cli.fail(str(e))
            policies[linear + "_planner"] = lambda n: pixel_planner.PixelPlannerAgent(
                n, vae, rnn, params, mover, settings, temperature=args.temperature
            )
        else:
            policies[linear + "_planner"] = lambda n: dream_planner.PlannerAgent(
                n, vae, rnn, params, settings, temperature=args.temperature
            )
    print(
        f"agent: controller from generation {c_sidecar.get('generation')} ({'dream' if c_sidecar.get('dream') else 'real env'}), M rnn_{c_sidecar['rnn_mode']}"
    )
    return policies, config, settings


def main(argv=None):
    args = parse_args(argv)
    results_dir, out = cli.results_paths(args, f"test_{args.controller}.json")
    config = sn.EnvConfig(n_humans=args.n_humans, max_steps=args.max_steps)
    linear = agent_row(args.controller)  # the linear agent's row; the planner's adds "_planner"
    print(
        f"08: {args.episodes} held-out episodes per policy, seed {args.seed}, {config.n_humans} people -> {out}"
    )

    # INPUTS: the agent (V + the M it was trained with + C), and the baselines.
    policies, settings = {}, None
    if not args.baselines_only:
        policies, config, settings = agent_policies(args, config, linear)
    for name in () if args.agent_only else BASELINES:
        policies[name] = lambda n, name=name: make_policy(name, n)
    cli.ensure_writable_dir(os.path.dirname(os.path.abspath(out)))
    cli.ensure_writable_dir(results_dir)

    # EVALUATION: the same seeds for everyone.
    seeds = evaluation.evaluation_seeds(args.seed, args.episodes)
    results, recorded = {}, {}
    stem = os.path.splitext(os.path.basename(out))[0]
    gif_prefix = "test" if stem == "test_controller" else stem
    for name, build in policies.items():
        start = time.perf_counter()
        policy = build(min(args.n_envs, args.episodes))
        with tqdm(total=args.episodes, desc=name, unit="ep", leave=False) as bar:
            summary, episodes = evaluation.evaluate(
                policy,
                seeds,
                config,
                args.n_envs,
                record=args.record,
                progress=bar,
            )
        summary["seconds"] = round(time.perf_counter() - start, 2)
        if isinstance(policy, PlanningAgent):
            summary["replaced_fraction"] = round(policy.replaced_fraction, 4)
            summary["env_steps"] = policy.steps
        results[name] = summary
        recorded[name] = episodes[: args.record]
        for k, ep in enumerate(recorded[name]):
            drawing.episode_gif(
                os.path.join(results_dir, f"{gif_prefix}_{name}_{k}.gif"), ep, f"{name} #{k}"
            )
        print(
            f"{name:13s} success {summary['success_rate']:.1%}, collision {summary['collision_rate']:.1%}, return {summary['return_mean']:+.3f} ({summary['seconds']:.1f} s)"
        )

    # OUTPUTS
    for k, pair in enumerate(zip(recorded.get(linear, []), recorded.get(linear + "_planner", []))):
        path = os.path.join(results_dir, f"{gif_prefix}_planner_vs_linear_{k}.gif")
        drawing.comparison_gif(path, list(pair), ["linear C", "planner"])
    report = dict(results)
    report["meta"] = {
        "episodes": args.episodes,
        "seed": args.seed,
        "env": config.to_dict(),
        "temperature": args.temperature,
    }
    if settings is not None:
        report["meta"]["planner"] = {"plan_with": args.plan_with, **settings.to_dict()}
    md = table(results)
    manifest.write_report(out, report, md)
    print()
    print(md)
    print(
        f"\nwrote {out}, {os.path.splitext(out)[0]}.md"
        + (f" and GIFs {gif_prefix}_<policy>_<k>.gif in {results_dir}" if args.record else "")
    )


if __name__ == "__main__":
    main()
