"""Trains M's look-ahead head, the planner's forecast of collisions (beyond the paper).

The planner (`08_test_controller.py --planner`) replaces C's action when the head
forecasts that holding it for the next second (10 steps) ends in a collision or
outside the room (lib/control/lookahead.py). The head reads what the agent reads:
V's z of the last three frames and M's h, and with --pixels (the default) the
centre of the same frames, the 5 m around the robot at 0.25 m a pixel
(lib/models/lookahead.py): finer than z's 1.3 m cells, where collisions are decided.
With --trunk conv (the default with pixels) a small convolutional net reads those
crops; --trunk dense reads them with one dense layer, as it reads z and h.

Each of --rounds rounds plays --episodes real episodes with the agent (C in the
first round; from the second on, the planner with the head of the round before, so
the data follows the planner's own states), with a uniform random action at
--explore of the steps. Every step is labelled by holding each of 25 grid actions
and the action taken for 10 steps (the head's longest horizon) on a copy of the true
state: the step at which the copy collides or leaves the room, if it does. Rows
where some action fails are kept, and --keep-safe of the others. The head is then
trained on all rounds' rows for --epochs epochs; the last tenth of each round's
episodes is held out for the log's AUC and safe-pick rate. With --heads N (default
3), N heads are trained side by side, each from its own initial weights and batch
order, and the planner reads their mean forecast: an ensemble errs less than any
one of them (docs/experiments.md, "Sharpening the planner's look-ahead").

Reads:
    data/models/vae.npz, rnn_<mode>.npz (the M named in controller.json) and
        controller.npz (--controller), with sidecars.
Writes:
    data/lookahead_data/round_<k>.npz: round k's labelled rows, with --pixels their
        frames' crops (a finished round is not replayed by --resume).
    data/models/lookahead.npz (+ .json): the --heads heads; the sidecar names V, M
        and C and the rounds and epochs done. lookahead_snapshot.npz: the optimizer,
        for --resume.
    data/models/lookahead_log.csv: per round and epoch, the training loss and the
        held-out AUC per horizon and safe-pick rate.
    data/results/lookahead.png: held-out states: the frame, and the risk of each
        grid action held for 10 steps as the head forecasts it and as it is.
"""

import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import contextlib
import os
import time

import chainer
import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import numpy as np
from tqdm import tqdm

from lib import cli, devices, manifest, training
from lib.control import lookahead as la
from lib.env import socnavenv as sn
from lib.env.evaluation import evaluate
from lib.fileio import atomic_path, file_hash
from lib.kernels.fast_encoder import make_encoder
from lib.models import checkpoints
from lib.models import lookahead as head_lib
from lib.seeding import derive_seed, derive_seeds

LOG_FIELDS = ["round", "epoch", "rows", "train_loss"] + [f"auc_{k}" for k in head_lib.HORIZONS]
LOG_FIELDS += ["safe_pick", "mixed_rows", "seconds"]


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--episodes", type=cli.positive_int, default=40000, help="real episodes played per round"
    )
    p.add_argument(
        "--rounds",
        type=cli.positive_int,
        default=1,
        help="rounds of play and training; rounds after the first play the planner",
    )
    p.add_argument(
        "--explore",
        type=unit_interval,
        default=0.2,
        help="fraction of steps that play a uniform random action instead (in [0, 1])",
    )
    p.add_argument(
        "--keep-safe",
        type=unit_interval,
        default=0.25,
        help="fraction kept of the rows where no labelled action fails (in [0, 1])",
    )
    p.add_argument("--epochs", type=cli.positive_int, default=4, help="epochs per round")
    p.add_argument("--batch-size", type=cli.positive_int, default=128, help="rows per batch")
    p.add_argument("--lr", type=cli.positive_float, default=1e-3, help="Adam's learning rate")
    p.add_argument("--width", type=cli.positive_int, default=256, help="hidden units per layer")
    p.add_argument(
        "--pixels",
        action=cli.argparse.BooleanOptionalAction,
        default=True,
        help="the heads also read the frames' centre (5 m around the robot, pooled to "
        "0.25 m a pixel) beside z and h; --no-pixels: z, its motion and h only",
    )
    p.add_argument(
        "--trunk",
        choices=head_lib.TRUNKS,
        default=cli.argparse.SUPPRESS,  # its default depends on --pixels
        help="how the heads read the state: conv (a small convolutional net over the "
        "crops, beside a dense layer over z and h) or dense (one dense layer over "
        "everything) (default: conv with --pixels, dense with --no-pixels)",
    )
    p.add_argument(
        "--heads",
        type=cli.positive_int,
        default=head_lib.MEMBERS,
        help="heads trained apart (own initial weights and batch order) whose mean forecast "
        "the planner reads; each adds the training time of one",
    )
    p.add_argument(
        "--controller",
        type=cli.file_stem,
        default="controller",
        help="which C: data/models/<name>.npz",
    )
    cli.add_n_envs_arg(p)
    cli.add_gpu_arg(p, "V, M and the head")
    cli.add_resume_args(p, "data/models/lookahead_snapshot.npz", "a trained head")
    cli.add_common_args(p)
    args = p.parse_args(argv)
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite exclude each other")
    trunk = getattr(args, "trunk", None)
    if trunk == "conv" and not args.pixels:
        p.error("--trunk conv reads the frames' crops — drop --no-pixels, or pass --trunk dense")
    args.trunk = trunk or ("conv" if args.pixels else "dense")
    return args


def unit_interval(text):
    value = cli.non_negative_float(text)
    if value > 1:
        raise cli.argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def load_rounds(folder, rounds):
    """The rows of finished rounds 1..rounds that exist, as one dict, and their count."""
    parts = []
    for k in range(1, rounds + 1):
        path = os.path.join(folder, f"round_{k}.npz")
        if not os.path.exists(path):
            break
        with np.load(path, allow_pickle=False) as f:
            parts.append({key: f[key] for key in f.files})
    return parts


def split(parts):
    """All rounds' rows (crops None without pixels), and a held-out mask: each round's
    last tenth of episodes."""
    keys = ("x", "actions", "fail", "episode") + (("crops",) if "crops" in parts[0] else ())
    rows = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    rows.setdefault("crops", None)
    held = np.concatenate([p["episode"] >= int(0.9 * p["n_episodes"][0]) for p in parts])
    return rows, held


def draw(path, head, part, grid_size):
    """Six held-out states of a round where some action fails: frame, forecast, truth.

    `part` holds the round's `picture_*` arrays (`lib.control.lookahead.Recorder.data`)."""
    n = len(part["picture_images"])
    if n == 0:
        return False
    chosen = np.linspace(0, n - 1, min(6, n)).round().astype(int)
    images = part["picture_images"][chosen]
    rows = {k: part[f"picture_{k}"][chosen] for k in ("x", "actions", "fail")}
    c = part["picture_crops"][chosen] if head.pixels else None
    side = round(np.sqrt(grid_size))
    seconds = max(head.horizons) / 10  # 0.1 s a step
    fig, axes = plt.subplots(
        len(chosen), 3, figsize=(8, 2.3 * len(chosen) + 0.6), squeeze=False, layout="constrained"
    )
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        x = head.xp.asarray(head_lib.row_features(rows["x"], c))
        acts = head.xp.asarray(rows["actions"][:, :grid_size])
        prob = devices.to_host(head.risk(x, acts, len(head.horizons) - 1))
    truth = (rows["fail"][:, :grid_size] > 0).astype(float)
    for r in range(len(chosen)):
        axes[r, 0].imshow(images[r])
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
        axes[r, 0].set_title("the agent's frame" if r == 0 else "", fontsize=9)
        for c, (grid_vals, title) in enumerate(
            (
                (prob[r], f"forecast P(fail within {seconds:g} s)"),
                (truth[r], "true (copy of the state)"),
            ),
            1,
        ):
            im = axes[r, c].imshow(
                grid_vals.reshape(side, side), vmin=0, vmax=1, cmap="magma", origin="lower",
                extent=(-1, 1, -1, 1),
            )  # fmt: skip
            axes[r, c].set_xlabel("rotation (+: counter-clockwise)", fontsize=8)
            if c == 1:
                axes[r, c].set_ylabel("advance (-1 stop, +1 full)", fontsize=8)
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
        for ax in axes[r, 1:]:
            ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=axes[:, 1:].ravel().tolist(), shrink=0.6, label="P(collision or exit)")
    fig.suptitle(
        f"Look-ahead head on held-out states: holding each action for {max(head.horizons)} steps",
        fontsize=10,
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return True


def main(argv=None):
    args = parse_args(argv)
    models = os.path.join(args.data_dir, "models")
    folder = os.path.join(args.data_dir, "lookahead_data")
    head_path = os.path.join(models, "lookahead.npz")
    snapshot_path = os.path.join(models, "lookahead_snapshot.npz")
    print(
        f"train_lookahead: {args.rounds} rounds x {args.episodes} episodes (explore {args.explore}), "
        f"{args.epochs} epochs per round, {args.heads} {args.trunk} heads reading "
        f"{'z, h and the frame centre' if args.pixels else 'z and h'}, seed {args.seed}"
    )

    # CHECKS: the agent exists; nothing is written before this passes.
    try:
        device = devices.select_device(args.gpu)
        controller, c_sidecar, vae, v_sidecar, rnn, _ = checkpoints.load_agent(
            args.data_dir, args.controller, device
        )
    except (devices.DeviceUnavailable, checkpoints.CheckpointError) as e:
        cli.fail(str(e))
    done = {"round": 0, "epoch": 0}
    if os.path.exists(head_path) and not (args.resume or args.overwrite):
        cli.fail(
            f"{head_path} exists — pass --resume to continue it or --overwrite to start afresh"
        )
    if args.resume and not os.path.exists(snapshot_path):
        cli.fail(f"--resume: {snapshot_path} not found — start without --resume")
    cli.ensure_writable_dir(models)
    cli.ensure_writable_dir(folder)
    if args.overwrite:
        for name in os.listdir(folder):
            if name.startswith("round_") and name.endswith(".npz"):
                os.remove(os.path.join(folder, name))

    # MODEL AND OPTIMIZER
    config = sn.EnvConfig(**checkpoints.observation_settings(v_sidecar))
    np.random.seed(derive_seed(args.seed, "lookahead/init") % 2**32)  # Chainer's initializers
    head = head_lib.make_head(
        args.heads, z_size=rnn.z_size, hidden_size=rnn.hidden_size,
        action_size=rnn.action_size, width=args.width,
        pixels=head_lib.pixel_size(vae.image_size) if args.pixels else 0, trunk=args.trunk,
    )  # fmt: skip
    head.to_device(device)
    optimizer = chainer.optimizers.Adam(alpha=args.lr)
    optimizer.setup(head)
    identity = {
        "vae_sha1": file_hash(os.path.join(models, "vae.npz")),
        "rnn": f"rnn_{c_sidecar['rnn_mode']}.npz",
        "controller": f"{args.controller}.npz",
        "controller_sha1": file_hash(os.path.join(models, f"{args.controller}.npz")),
    }
    if args.resume:
        sidecar = manifest.read_json(training.sidecar_path(head_path)) or {}
        trained = sidecar.get("config", {}).get("members", 1)
        if trained != args.heads:
            cli.fail(
                f"--resume: {head_path} has {trained} head(s) — pass --heads {trained}, "
                "or --overwrite to start afresh"
            )
        if bool(sidecar.get("config", {}).get("pixels", 0)) != args.pixels:
            flag = "--no-pixels" if args.pixels else "--pixels"
            cli.fail(f"--resume: {head_path} was trained with {flag} — pass {flag}, or --overwrite")
        trunk = sidecar.get("config", {}).get("trunk", "dense")
        if trunk != args.trunk:
            cli.fail(
                f"--resume: {head_path} was trained with --trunk {trunk} — pass --trunk {trunk}, "
                "or --overwrite"
            )
        try:
            state, _ = training.load_snapshot(snapshot_path, head, optimizer)
        except ValueError as e:
            cli.fail(str(e))
        if state.get("identity") != identity:
            cli.fail(f"{snapshot_path} was trained for another V or C — pass --overwrite")
        done = {"round": state["round"], "epoch": state["epoch"]}
        print(f"resumed: round {done['round']}, epoch {done['epoch']} done")
    params = controller.get_flat()[None]
    encoder = make_encoder(vae)
    history = list(state.get("log", [])) if args.resume else []

    # Ctrl-C is deferred to the end of the episode or batch under way, then the run stops
    # with what the last epoch saved: --resume replays the unfinished round or epoch from
    # its seeds, so the result is the uninterrupted run's. A second Ctrl-C aborts at once.
    saved = dict(done)  # what the last finished epoch saved, for the exit message
    with (
        training.DeferredInterrupt() as interrupt,
        stops_with_what_is_saved(saved, snapshot_path, folder),
    ):
        for k in range(1, args.rounds + 1):
            # PLAY AND LABEL (a round whose rows were saved is not replayed)
            path = os.path.join(folder, f"round_{k}.npz")
            if not os.path.exists(path):
                first = k == 1
                recorder = la.Recorder(
                    args.n_envs, vae, rnn, params, None if first else head, la.LookaheadSettings(),
                    args.explore, args.keep_safe, max(head.horizons),
                    derive_seed(args.seed, "lookahead/explore", k), encoder=encoder,
                    pixels=args.pixels,
                )  # fmt: skip
                recorder.picture_from = int(0.9 * args.episodes)  # held out: see split()
                seeds = derive_seeds(args.seed, f"lookahead/round{k}", args.episodes)
                start = time.perf_counter()
                with tqdm(total=args.episodes, desc=f"round {k}: play and label", unit="ep") as bar:
                    summary, _ = evaluate(
                        recorder, seeds, config, args.n_envs, progress=interrupt.checking(bar)
                    )
                rows = recorder.data()
                rows["n_episodes"] = np.array([args.episodes])
                with atomic_path(path) as tmp:
                    np.savez(tmp, **rows)
                print(
                    f"round {k}: {'C' if first else 'the planner'} with exploration: success "
                    f"{summary['success_rate']:.1%}, collisions {summary['collision_rate']:.1%}; "
                    f"kept {len(rows['x'])} of {recorder.seen} rows ({time.perf_counter() - start:.0f} s)"
                )
                # the rows are read back below; two copies would double memory
                del recorder, rows
            if k < done["round"] or (k == done["round"] and done["epoch"] >= args.epochs):
                continue

            # TRAIN on every round so far
            rows, held = split(load_rounds(folder, k))
            if args.pixels and rows["crops"] is None:
                cli.fail(
                    f"{folder}: the saved rounds have no frames' crops (played with --no-pixels) "
                    "— pass --no-pixels, or --overwrite to replay them"
                )
            crops = rows["crops"] if args.pixels else None
            if k == 1 and done["round"] == 0 and done["epoch"] == 0:
                head.set_normalization(*head_lib.moments(rows["x"], ~held, crops_rows=crops))
            train_idx, held_idx = np.flatnonzero(~held), np.flatnonzero(held)
            first_epoch = done["epoch"] if k == done["round"] else 0
            for epoch in range(first_epoch, args.epochs):
                # Each head its own batch order (the first's is that of a single head).
                orders = [
                    np.random.default_rng(
                        derive_seed(args.seed, "lookahead/epoch", k, epoch, *([m] if m else []))
                    ).permutation(train_idx)
                    for m in range(args.heads)
                ]
                start, total = time.perf_counter(), 0.0
                batches = range(0, len(train_idx), args.batch_size)
                for i in tqdm(
                    batches, desc=f"round {k} epoch {epoch + 1}/{args.epochs}", unit="batch"
                ):
                    loss = 0
                    for member, order in zip(head_lib.members(head), orders):
                        b = order[i : i + args.batch_size]
                        x = head_lib.row_features(rows["x"][b], None if crops is None else crops[b])
                        loss += head_lib.loss(member, x, rows["actions"][b], rows["fail"][b])
                    value = float(loss.array) / args.heads
                    if not np.isfinite(value):
                        cli.fail(
                            f"the look-ahead loss is {value} in round {k}, epoch {epoch + 1}",
                            code=1,
                        )
                    head.cleargrads()
                    loss.backward()
                    optimizer.update()
                    total += value * len(orders[0][i : i + args.batch_size])
                interrupt.raise_if_interrupted()
                metrics = head_lib.held_out_metrics(
                    head, rows["x"][held_idx], rows["actions"][held_idx], rows["fail"][held_idx],
                    la.LABEL_GRID**2, crops_rows=None if crops is None else crops[held_idx],
                )  # fmt: skip
                row = {"round": k, "epoch": epoch + 1, "rows": len(train_idx)}
                row["train_loss"] = round(total / max(len(train_idx), 1), 5)
                row.update({key: round(v, 4) for key, v in metrics.items()})
                row["seconds"] = round(time.perf_counter() - start, 1)
                history.append(row)
                state = {"round": k, "epoch": epoch + 1, "identity": identity, "log": history}
                sidecar = {
                    "config": head.config(), "identity": identity, "rounds": k, "epochs": epoch + 1,
                    "last": row, "args": vars(args), "versions": manifest.versions(),
                }  # fmt: skip
                # The head first: a snapshot on disk then always has its head's
                # sidecar beside it, whenever a kill -9 lands.
                training.save_model(head_path, head, sidecar)
                training.save_snapshot(snapshot_path, head, optimizer, state)
                saved.update(round=k, epoch=epoch + 1)
                write_log(os.path.join(models, "lookahead_log.csv"), history)
                print(
                    f"round {k} epoch {epoch + 1}: loss {row['train_loss']:.4f}, held-out AUC "
                    + ", ".join(f"{h} steps {row[f'auc_{h}']:.3f}" for h in head.horizons)
                    + f"; safe pick {row['safe_pick']:.1%} of {row['mixed_rows']} mixed rows"
                )
            done = {"round": k, "epoch": args.epochs}

    # OUTPUTS
    picture = os.path.join(args.data_dir, "results", "lookahead.png")
    cli.ensure_writable_dir(os.path.dirname(picture))
    with np.load(os.path.join(folder, f"round_{args.rounds}.npz"), allow_pickle=False) as f:
        part = {k: f[k] for k in f.files if k.startswith("picture_")}
    drawn = draw(picture, head, part, la.LABEL_GRID**2)
    print(f"head: {head_path} (+ lookahead.json); log: {models}/lookahead_log.csv")
    print(f"picture: {picture}" if drawn else "no held-out state with a failing action to draw")


@contextlib.contextmanager
def stops_with_what_is_saved(saved, snapshot_path, folder):
    """Ends the run in one message when Ctrl-C stops it (`training.Stopped` from the
    deferred interrupt, or a second Ctrl-C): what `saved` (the last finished round and
    epoch, kept up to date by the caller) holds, and how to continue."""
    try:
        yield
    except (training.Stopped, KeyboardInterrupt):
        if saved["epoch"] == 0:
            cli.fail(
                "interrupted before the first epoch ended: nothing to resume — rerun "
                f"without --resume (the rounds played so far, in {folder}, are kept)",
                code=130,
            )
        cli.stopped(training.Stopped(
            f"interrupted: {snapshot_path} holds round {saved['round']}, epoch "
            f"{saved['epoch']} (the work under way is redone) — continue with --resume",
            130,
        ))  # fmt: skip


def write_log(path, history):
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(",".join(LOG_FIELDS) + "\n")
        f.writelines(",".join(str(row.get(k, "")) for k in LOG_FIELDS) + "\n" for row in history)


if __name__ == "__main__":
    main()
