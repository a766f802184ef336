"""Trains C, the linear controller on [z, h], with CMA-ES: in the real
environment through V and M, or with --dream inside M alone (with --mover in the
pixel dream: the mover's frames, read by V, judged by M's heads).

Reads:
    data/models/vae.npz (+ json), data/models/rnn_<mode>.npz (+ json).
    With --dream: the first frames of data/rnn_data/train episodes, encoded by V
        (lib/data/latents.py cache), as the dreams' starting points; with --mover also
        data/models/mover.npz and each episode's frames 0 and 1.
Writes:
    data/models/controller.npz (+ controller.json): the best controller so far
        by the real-environment evaluation of the CMA-ES mean.
    data/models/controller_es.npz: the CMA-ES history (returns and checksums of
        every generation, no pickles) and evaluation record; --resume replays it
        to continue exactly.
    data/models/controller_log.csv and controller_progress.png: per generation,
        best / mean / worst fitness, sigma, and the real-env evaluation.
    data/results/controller_best.gif: the best controller in the real
        environment (global view beside its 64x64 observation).

Each generation, every candidate plays --trials episodes; trial j uses the same
episode for all candidates (common random numbers) and depends only on
(--seed, generation, j), so results are identical for any --workers. Fitness is
the mean return. Every --eval-every generations the CMA-ES mean is evaluated in
the real environment on --eval-episodes held-out episodes.

With --imitate TEACHER, CMA-ES starts from a C fitted by DAgger to a privileged
teacher's actions on the [z, h] the agent sees (lib/control/imitation.py), instead
of the paper's zero: the teacher reads the true state during training only, the
agent still acts from pixels through V, M and a linear C. The imitated C is
evaluated as generation 0 and kept if no later mean beats it. Also writes
data/models/controller_imitation.json: the DAgger iterations.
"""

import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import dataclasses
import os
import time

import numpy as np
from tqdm import tqdm

from lib import cli, devices, drawing, manifest, parallel, tensorboard_log, training
from lib.control import pixel_dream
from lib.control.agent import WorldModelsAgent
from lib.control.es import CMAES, CannotResume
from lib.control.fitness import Evaluator, Spec, WorkerDied
from lib.control.imitation import TEACHERS, dagger
from lib.data import latents
from lib.env import socnavenv as sn
from lib.env.evaluation import evaluate, evaluation_seeds
from lib.models import saved_models
from lib.models.controller import Controller, n_params
from lib.seeding import derive_seed
from lib.tensorboard_log import EventLog

RNN_PREFERENCE = ("dream", "reward", "window", "normal")
EVAL_LOCKSTEP = 64  # evaluation episodes the agent steps in lockstep
LOG_FIELDS = [
    "generation",
    "best",
    "mean",
    "worst",
    "sigma",
    "mean_length",
    "eval_return",
    "eval_success",
    "eval_collision",
    "seconds",
]
CURVES = [
    ("best", "best candidate"),
    ("mean", "population mean"),
    ("worst", "worst candidate"),
    ("eval_return", "CMA mean, real env"),
]
# The log's columns from a real-env evaluation's summary.
EVAL_COLUMNS = {
    "eval_return": "return_mean",
    "eval_success": "success_rate",
    "eval_collision": "collision_rate",
}
# What the evaluation record keeps of each real-env evaluation.
EVAL_KEYS = ("return_mean", "success_rate", "collision_rate", "timeout_rate", "out_of_map_rate")


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--epochs", type=cli.positive_int, default=100, help="CMA-ES generations in total"
    )
    p.add_argument("--popsize", type=cli.positive_int, default=64, help="candidates per generation")
    p.add_argument("--trials", type=cli.positive_int, default=16, help="episodes per candidate")
    p.add_argument("--sigma", type=float, default=0.1, help="initial CMA-ES step size")
    p.add_argument(
        "--diagonal",
        action="store_true",
        help="separable CMA-ES: adapt only the covariance's diagonal, which learns per-"
        "parameter step sizes much faster in C's hundreds of dimensions (default: the "
        "paper's full covariance)",
    )
    p.add_argument("--dream", action="store_true", help="train inside M (needs reward/done heads)")
    p.add_argument(
        "--mover",
        action="store_true",
        help="with --dream: dream in pixels (beyond the paper): the pixel mover "
        "(models/mover.npz, 04b_train_mover.py) moves two real frames of an episode, V reads "
        "the dreamed frames and M's heads give the rewards and the ending "
        "(lib/control/pixel_dream.py); default: M's own samples, the paper's dream",
    )
    p.add_argument(
        "--name",
        type=cli.file_stem,
        default="controller",
        help="stem of every file this run writes (models/<name>.npz, <name>_es.npz, "
        "<name>_log.csv, ...; results/<name>_best.gif), so two Cs can sit side by side "
        "(for example --dream --name controller_dream); 08 reads it with --controller",
    )
    p.add_argument(
        "--rnn-mode",
        choices=RNN_PREFERENCE,
        default=None,
        help="which M (default: the first present of dream, reward, window, normal)",
    )
    cli.add_temperature_arg(p, "M's samples in dreams")
    p.add_argument(
        "--eval-every",
        type=cli.positive_int,
        default=5,
        help="generations between real-env evaluations",
    )
    p.add_argument(
        "--eval-episodes",
        type=cli.positive_int,
        default=50,
        help="held-out episodes per evaluation",
    )
    p.add_argument(
        "--target-return",
        type=float,
        default=None,
        help="stop once an evaluation reaches this mean return",
    )
    p.add_argument(
        "--keep",
        choices=("best", "last"),
        default="best",
        help="which evaluated C is <name>.npz: best, the one with the best real-env return "
        "(the real room chooses among the Cs, a selection beyond the paper's dream "
        "training); last, the last generation's mean (the paper: trained in the dream, only "
        "tested in the room; the evaluations are logged, not used)",
    )
    parallel.add_worker_args(
        p,
        None,
        "worker processes (default: one per core on the CPU; 1 with --gpu, where one "
        "process keeps the device busy and each extra one costs its own CUDA context)",
    )
    p.add_argument(
        "--group-size", type=cli.positive_int, default=4, help="candidates per lockstep batch"
    )
    cli.add_room_args(p, sn.N_HUMANS, sn.MAX_STEPS)
    p.add_argument("--imitate", choices=TEACHERS, default=None, help=IMITATE_HELP)
    p.add_argument(
        "--imitate-iterations",
        type=cli.positive_int,
        default=None,
        help=f"DAgger iterations with --imitate; the first is driven by the teacher (default: {IMITATE_ITERATIONS})",
    )
    p.add_argument(
        "--imitate-episodes",
        type=cli.positive_int,
        default=None,
        help=f"episodes per DAgger iteration with --imitate (default: {IMITATE_EPISODES})",
    )
    cli.add_gpu_arg(p, "V, M and C in every worker and in the evaluations")
    cli.add_resume_args(p, "controller_es.npz", existing="a run")
    cli.add_common_args(p)
    args = p.parse_args(argv)
    for flag in ("imitate_iterations", "imitate_episodes"):
        if getattr(args, flag) is not None and args.imitate is None:
            p.error(f"--{flag.replace('_', '-')} needs --imitate TEACHER")
    if args.mover and not args.dream:
        p.error("--mover is a kind of dream: add --dream")
    if args.imitate is not None and args.dream:
        p.error(
            "--imitate starts C from real-environment imitation; a --dream C must learn in M alone"
        )
    args.imitate_iterations = args.imitate_iterations or IMITATE_ITERATIONS
    args.imitate_episodes = args.imitate_episodes or IMITATE_EPISODES
    if not args.sigma > 0:
        p.error(f"--sigma must be > 0, got {args.sigma}")
    if args.popsize < 2:
        p.error("--popsize must be at least 2")
    cli.check_run_args(p, args)
    if args.workers is None:
        args.workers = 1 if args.gpu >= 0 else cli.default_workers()
    return args


IMITATE_ITERATIONS = 5
IMITATE_EPISODES = 300
IMITATE_HELP = (
    "start CMA-ES from a C fitted by DAgger to this teacher's actions on the agent's own "
    "[z, h] (the teacher reads the true state, in training only; C stays linear and acts "
    "from pixels); default: the paper's start at zero"
)


def pick_rnn_mode(models, wanted):
    if wanted is not None:
        return wanted
    for mode in RNN_PREFERENCE:
        if os.path.exists(os.path.join(models, f"rnn_{mode}.npz")):
            return mode
    cli.fail(f"no M in {models} — run 04_train_rnn.py first (--mode dream for --dream)")


def load_m(data_dir, rnn_mode, z_size, device, dream):
    """M (`rnn_<mode>.npz`) on `device`; fails in one line if it is missing, does not fit
    V, or lacks the reward and done heads that `dream` needs."""
    try:
        rnn, _ = saved_models.load_rnn(data_dir, rnn_mode, z_size, device)
    except saved_models.CheckpointError as e:
        cli.fail(str(e))
    if dream and not (rnn.can_dream):
        rnn_path = os.path.join(data_dir, "models", f"rnn_{rnn_mode}.npz")
        cli.fail(
            f"--dream needs an M with reward and done heads; {rnn_path} has none — run 04_train_rnn.py --mode dream (or reward)"
        )
    return rnn


def write_dream_starts(data_dir, vae, path, pixels=False):
    """Saves V's (mu, logvar) of the first frame of every 02 training episode to `path`:
    where dreams start; with `pixels` also each episode's frames 0 and 1, its first
    action and z_0 (`pixel_dream.Starts`), where pixel dreams start."""
    models = os.path.join(data_dir, "models")
    train_dir = os.path.join(data_dir, "rnn_data", "train")
    try:
        data, _ = latents.encode_split(train_dir, vae, os.path.join(models, "vae.npz"))
    except latents.NoEpisodesError as e:
        cli.fail(f"{e} — run 02_generate_rnn_data.py first (dreams start from its first frames)")
    first = data.frame_offsets[:-1]
    arrays = {"mu": data.mu[first], "logvar": data.logvar[first]}
    if pixels:
        two = []
        for name in data.files:  # frames 0 and 1 of each episode, in data's order
            with np.load(os.path.join(train_dir, name), allow_pickle=False) as f:
                obs = f["obs"][:2]
            two.append(obs[[0, len(obs) - 1]])
        starts = pixel_dream.episode_starts(np.stack(two), data, np.arange(len(first)))
        arrays.update(starts._asdict())
    np.savez(path, **arrays)
    print(f"dreams start from the first frames of {len(first)} real episodes")


def real_eval(params, vae, rnn, seeds, config):
    """One controller `params` (n_params,) float32 in the real env through V and M, on
    `seeds`: (the summary, the first episode recorded)."""
    agent = WorldModelsAgent(min(EVAL_LOCKSTEP, len(seeds)), vae, rnn, params[None])
    summary, episodes = evaluate(agent, seeds, config, n_envs=EVAL_LOCKSTEP, record=1)
    return summary, episodes[0]


def save_best(controller, params, args, rnn_mode, generation, summary, shown):
    """controller.npz (+ json) and controller_best.gif for a new best evaluation."""
    models = os.path.join(args.data_dir, "models")
    results = os.path.join(args.data_dir, "results")
    controller.set_flat(params)
    sidecar = {"config": controller.config(), "rnn_mode": rnn_mode, "dream": args.dream}
    sidecar["pixel_dream"] = args.mover
    # Which V and M it reads: a C is meaningless on another M's h (saved_models.load_agent).
    sidecar["trained_with"] = saved_models.model_hashes(args.data_dir, rnn_mode)
    sidecar.update(temperature=args.temperature, generation=generation, evaluation=summary)
    training.save_model(
        os.path.join(models, f"{args.name}.npz"), controller, {**sidecar, "args": vars(args)}
    )
    drawing.episode_gif(os.path.join(results, f"{args.name}_best.gif"), shown, f"gen {generation}")


def imitate(args, vae, rnn, config, models, interrupt):
    """C's starting point: DAgger onto --imitate's teacher (lib/control/imitation.py).
    Prints each iteration and writes <name>_imitation.json; returns the flat parameters.
    Raises `training.Stopped` after the episode during which Ctrl-C was pressed
    (`interrupt`, a `training.DeferredInterrupt`): imitation keeps no snapshot."""
    print(
        f"imitating {args.imitate}: {args.imitate_iterations} DAgger iterations x "
        f"{args.imitate_episodes} episodes (the first driven by the teacher, then by C)"
    )
    total = args.imitate_iterations * args.imitate_episodes
    with tqdm(total=total, desc="imitation", unit="ep", leave=False) as bar:

        def report(row):
            bar.write(
                f"imitation {row.iteration + 1}/{args.imitate_iterations}: {row.driver} drove "
                f"{row.episodes} episodes (success {row.success_rate:.0%}, collision "
                f"{row.collision_rate:.0%}, out of map {row.out_of_map_rate:.0%}); C refitted "
                f"on {row.steps} labelled steps"
            )

        progress = interrupt.checking(bar)  # between episodes, never inside the kernels
        params, history = dagger(
            vae,
            rnn,
            args.imitate,
            config,
            args.seed,
            args.imitate_iterations,
            args.imitate_episodes,
            on_iteration=report,
            on_episode=lambda ep: progress.update(1),
        )
    manifest.write_json(
        os.path.join(models, f"{args.name}_imitation.json"),
        manifest.make(
            "07_train_controller.py",
            vars(args),
            teacher=args.imitate,
            iterations=[dataclasses.asdict(row) for row in history],
        ),
    )
    return params


def headline(args, rnn_mode):
    """The run's first line: the search, where candidates are scored, the workers."""
    if args.mover:
        where = f"in the pixel dream (mover.npz, V, rnn_{rnn_mode}'s heads)"
    elif args.dream:
        where = f"inside M (rnn_{rnn_mode}, tau {args.temperature})"
    else:
        where = f"in the real env through V and rnn_{rnn_mode}"
    gpu = f", GPU {args.gpu}" if args.gpu >= 0 else ""
    return (
        f"07: CMA-ES, {args.epochs} generations x {args.popsize} candidates x {args.trials} "
        f"trials, sigma {args.sigma}{' (diagonal)' if args.diagonal else ''}, {where}, "
        f"{args.workers} workers ({args.backend}{gpu}), seed {args.seed}"
    )


def one_generation(es, evaluator, evaluate_mean, args):
    """One generation: CMA-ES asks for candidates, the workers score them (`Evaluator`),
    CMA-ES is told their fitness, and when due its mean is evaluated in the real env
    (`evaluate_mean`). Returns the log's row and the line to print."""
    start = time.perf_counter()
    gen = es.generation
    xs = es.ask()
    returns, lengths = evaluator(xs, gen)
    fitness = returns.mean(axis=1)
    es.tell(xs, fitness)
    row = {"generation": gen + 1, "best": float(fitness.max())}
    row.update(mean=float(fitness.mean()), worst=float(fitness.min()), sigma=es.sigma)
    row["mean_length"] = float(lengths.mean())
    text = (
        f"generation {gen + 1}: fitness best {row['best']:+.3f} mean {row['mean']:+.3f} "
        f"worst {row['worst']:+.3f}, sigma {es.sigma:.4f}, {lengths.mean():.0f} steps"
    )
    if (gen + 1) % args.eval_every == 0 or gen + 1 == args.epochs:
        columns, said = evaluate_mean(es.mean.astype(np.float32), gen + 1)
        row.update(columns)
        text += said
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row, text


def write_outputs(args, models, results, generations, record):
    """The run's manifest (`<name>_es.json`) and the closing line."""
    manifest.write_json(
        os.path.join(models, f"{args.name}_es.json"),
        manifest.make("07_train_controller.py", vars(args), generations=generations, record=record),
    )
    if not os.path.exists(os.path.join(models, f"{args.name}.npz")):
        print(f"no evaluation ran yet, so no {args.name}.npz: raise --epochs or lower --eval-every")
    else:
        kept_return = (
            record["evals"][-1]["return_mean"] if args.keep == "last" else record["best_eval"]
        )
        print(
            f"{args.keep} real-env return {kept_return:+.3f}: {models}/{args.name}.npz; log "
            f"{models}/{args.name}_log.csv, {args.name}_progress.png; GIF "
            f"{results}/{args.name}_best.gif"
        )


def main(argv=None):
    args = parse_args(argv)
    models = os.path.join(args.data_dir, "models")
    results = os.path.join(args.data_dir, "results")
    es_path = os.path.join(models, f"{args.name}_es.npz")
    config = sn.EnvConfig(n_humans=args.n_humans, max_steps=args.max_steps)
    # CHECKS AND INPUTS: V and M exist and fit; nothing is written before this passes.
    try:
        device = devices.select_device(args.gpu)
        vae, vae_sidecar = saved_models.load_vae(args.data_dir, device)
    except (devices.DeviceUnavailable, saved_models.CheckpointError) as e:
        cli.fail(str(e))
    config = dataclasses.replace(config, **saved_models.observation_settings(vae_sidecar))
    rnn_mode = pick_rnn_mode(models, args.rnn_mode)
    print(headline(args, rnn_mode))
    rnn = load_m(args.data_dir, rnn_mode, vae_sidecar["config"]["z_size"], device, args.dream)
    try:
        training.check_run(es_path, args.resume, args.overwrite, start="to start")
        parallel.check_backend(args.backend)
    except (training.RunConflict, parallel.BackendUnavailable) as e:
        cli.fail(str(e))
    cli.ensure_writable_dir(models)
    starts_path = os.path.join(models, "dream_starts.npz") if args.dream else None
    if args.mover:  # the pixel dream's mover: 04b's
        try:
            saved_models.mover_for(args.data_dir, config.image_size, "--mover")
        except saved_models.CheckpointError as e:
            cli.fail(str(e))
    if args.dream:
        write_dream_starts(args.data_dir, vae, starts_path, pixels=args.mover)

    # SEARCH: CMA-ES over the controller's flat parameters.
    size = n_params(rnn.z_size, rnn.hidden_size, rnn.action_size)
    cma_seed = derive_seed(args.seed, "cma") % (2**31 - 2) + 1  # pycma: 0 means "clock"
    record = {"best_eval": -np.inf, "evals": []}
    if args.resume:
        try:
            es, record = CMAES.resume(es_path, size)
        except CannotResume as e:
            cli.fail(str(e))
        print(
            f"resumed after generation {es.generation} (best evaluation so far {record['best_eval']:.3f})"
        )
    log_path = os.path.join(models, f"{args.name}_log.csv")
    events_dir = tensorboard_log.run_dir(args.data_dir, args.name)  # TensorBoard's curves
    eval_seed = derive_seed(args.seed, "controller-eval") % 2**31
    eval_seeds = evaluation_seeds(eval_seed, args.eval_episodes)
    controller = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)

    def evaluate_mean(params, generation):
        """Evaluates C `params` in the real env, records it, keeps it as controller.npz
        if it is the best so far: (the log's columns, the line's words)."""
        summary, shown = real_eval(params, vae, rnn, eval_seeds, config)
        record["evals"].append({"generation": generation, **{k: summary[k] for k in EVAL_KEYS}})
        said = f"; real env ({args.eval_episodes} eps): return {summary['return_mean']:+.3f}, success {summary['success_rate']:.0%}, collision {summary['collision_rate']:.0%}"
        if args.keep == "last" or summary["return_mean"] > record["best_eval"]:
            record["best_eval"] = max(record["best_eval"], summary["return_mean"])
            save_best(controller, params, args, rnn_mode, generation, summary, shown)
            said += " (saved: --keep last)" if args.keep == "last" else " (new best, saved)"
        return {column: summary[k] for column, k in EVAL_COLUMNS.items()}, said

    # Ctrl-C is deferred: imitation stops after the episode under way (keeping nothing),
    # CMA-ES after the generation under way, once that is saved. A second Ctrl-C aborts
    # at once. (Local pool workers ignore SIGINT: lib/control/fitness.py.)
    # The event log is closed on every way out: left open at exit, tensorboardX's own
    # atexit close needs a thread that Python 3.12+ no longer starts at shutdown.
    events = EventLog(events_dir, resume_step=es.generation + 1 if args.resume else None)
    with events, training.DeferredInterrupt() as interrupt:
        if not args.resume:
            x0 = None
            log = training.CsvLog(log_path, LOG_FIELDS, events=events)
            if args.imitate:
                # THE START: C imitating the teacher on its own [z, h] (DAgger), evaluated
                # like any later CMA-ES mean, as generation 0.
                try:
                    x0 = imitate(args, vae, rnn, config, models, interrupt)
                except (KeyboardInterrupt, training.Stopped):
                    cli.fail(
                        "interrupted during imitation, before CMA-ES began: rerun to start again",
                        code=130,
                    )
                columns, said = evaluate_mean(x0, 0)  # the first evaluation: always kept
                log.append({"generation": 0, **columns})
                print(f"generation 0 (imitated C){said}")
            es = CMAES(size, args.popsize, args.sigma, cma_seed, x0=x0, diagonal=args.diagonal)
        else:
            log = training.CsvLog(log_path, LOG_FIELDS, es.generation, events)
        spec = Spec(args.data_dir, rnn_mode, args.trials, args.seed, args.dream, args.temperature)
        spec.env, spec.dream_starts, spec.gpu = config.to_dict(), starts_path, args.gpu
        spec.mover = args.mover

        progress_png = os.path.join(models, f"{args.name}_progress.png")
        title = f"C: fitness per generation ({'dream' if args.dream else 'real env'})"
        target = np.inf if args.target_return is None else args.target_return

        # GENERATIONS
        with Evaluator(
            spec, args.workers, args.backend, args.address, args.group_size
        ) as evaluator:
            try:
                while es.generation < args.epochs:
                    row, text = one_generation(es, evaluator, evaluate_mean, args)
                    log.append(row)
                    es.save(es_path, record)
                    training.plot_curves(log, progress_png, CURVES, title, "mean return")
                    print(text + f", {row['seconds']:.1f} s", flush=True)
                    interrupt.stop_if_requested(es_path, f"generation {es.generation}")
                    if row.get("eval_return", -np.inf) >= target:
                        print(f"target return {args.target_return} reached: stopping")
                        break
            except training.Stopped as stop:
                cli.stopped(stop)
            except KeyboardInterrupt:  # the second Ctrl-C
                cli.fail(
                    f"interrupted: {es_path} holds the run up to generation {es.generation} — continue with --resume",
                    code=130,
                )
            except WorkerDied as e:
                cli.fail(
                    f"{e}; {es_path} holds the run up to generation {es.generation} — continue with --resume",
                    code=1,
                )

    # OUTPUTS
    write_outputs(args, models, results, es.generation, record)


if __name__ == "__main__":
    main()
