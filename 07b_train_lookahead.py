"""Trains M's look-ahead head, the planner's forecast of collisions (beyond the paper).

The planner (`08_test_controller.py --planner`) replaces C's action when the head
forecasts that holding it for the next second (10 steps) ends in a collision or
outside the room (lib/control/lookahead_planner.py). The head reads what the agent reads:
V's z of the last three frames and M's h, and with --pixels (the default) the
centre of the same frames, the 5 m around the robot at 0.25 m a pixel
(lib/models/lookahead_heads.py): finer than z's 1.3 m cells, where collisions are decided.
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
        frames' crops, and what they were played for (V, M and C by content, and the
        flags): a saved round is reused, by --resume or a new run, only if that matches.
    data/models/lookahead.npz (+ .json): the --heads heads; the sidecar names V, M
        and C and the rounds and epochs done.
    data/models/lookahead_snapshot.npz (+ .json): the run as 03's and 04's are
        (lib/checkpointer.py): heads, Adam, and the epoch and batch reached, saved after
        every epoch and, on Ctrl-C or --max-iterations, after the batch in hand;
        --resume continues it exactly. Epochs count over all rounds: round k holds
        epochs (k - 1) * --epochs + 1 to k * --epochs. Ctrl-C while a round plays stops
        after the episode in hand, and the round is replayed from its seeds.
    data/models/lookahead_log.csv: per epoch (counted over all rounds, then round and
        epoch within it), the training loss and the held-out AUC per horizon and
        safe-pick rate.
    data/results/lookahead.png: held-out states: the frame, and the risk of each
        grid action held for 10 steps as the head forecasts it and as it is.
"""

import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import json
import os
import time

import chainer
import numpy as np
from tqdm import tqdm

from lib import cli, devices, drawing, manifest, tensorboard_log, training
from lib.checkpointer import Checkpointer
from lib.control import lookahead_planner as la
from lib.env import socnavenv as sn
from lib.env.evaluation import evaluate
from lib.fileio import atomic_path, file_hash
from lib.kernels.fast_encoder import make_encoder
from lib.models import lookahead_heads as head_lib
from lib.models import saved_models
from lib.seeding import derive_seed, derive_seeds

# "epochs" counts all rounds' epochs (the run's position); "epoch" is within the round
LOG_FIELDS = ["epochs", "round", "epoch", "rows", "train_loss"]
LOG_FIELDS += [f"auc_{k}" for k in head_lib.HORIZONS] + ["safe_pick", "mixed_rows", "seconds"]


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
    cli.add_run_args(p, "data/models/lookahead_snapshot.npz")
    cli.add_common_args(p)
    args = p.parse_args(argv)
    cli.check_run_args(p, args)
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


def load_rounds(folder, rounds, identity):
    """The saved rows of rounds 1..rounds that exist (a list of dicts), each checked to
    have been played for `identity` (`round_identity`).

    Raises:
        ValueError: a round was played for another agent or with other settings.
    """
    parts = []
    for k in range(1, rounds + 1):
        path = round_path(folder, k)
        if not os.path.exists(path):
            break
        with np.load(path, allow_pickle=False) as f:
            part = {key: f[key] for key in f.files}
        played = json.loads(str(part.pop("identity"))) if "identity" in part else {}
        wanted = round_identity(identity, k)
        if identity["pixels"] and "crops" not in part:
            raise ValueError(
                f"{path}: the saved round has no frames' crops (played with --no-pixels) "
                "— pass --no-pixels, or --overwrite to replay it"
            )
        differ = sorted(key for key in wanted if played.get(key) != wanted[key])
        if differ:
            raise ValueError(
                f"{path} was played with other {', '.join(differ)} (another V, M or C, or "
                "other flags) — pass --overwrite to replay it, or the flags it was played with"
            )
        parts.append(part)
    return parts


def round_path(folder, k):
    return os.path.join(folder, f"round_{k}.npz")


def round_identity(identity, k):
    """What round k's rows depend on: the agent and the flags that shape play and, from
    the second round on, the head that plays (`run_identity`), and the round."""
    return {**identity, "round": k}


def run_identity(args, models, rnn_name):
    """The agent (V, M, C by content) and the flags a run's rows and head depend on: a
    snapshot or a saved round made with another is not reused."""
    flags = ("episodes", "explore", "keep_safe", "epochs", "batch_size", "lr", "width")
    flags += ("pixels", "trunk", "heads", "seed")
    return {
        "vae_sha1": file_hash(os.path.join(models, "vae.npz")),
        "rnn": rnn_name,
        "rnn_sha1": file_hash(os.path.join(models, rnn_name)),
        "controller": f"{args.controller}.npz",
        "controller_sha1": file_hash(os.path.join(models, f"{args.controller}.npz")),
        **{flag: getattr(args, flag) for flag in flags},
    }


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

    `part` holds the round's `picture_*` arrays (`lib.control.lookahead_planner.Recorder.data`)."""
    n = len(part["picture_images"])
    if n == 0:
        return False
    chosen = np.linspace(0, n - 1, min(6, n)).round().astype(int)
    images = part["picture_images"][chosen]
    rows = {k: part[f"picture_{k}"][chosen] for k in ("x", "actions", "fail")}
    c = part["picture_crops"][chosen] if head.pixels else None
    side = round(np.sqrt(grid_size))
    seconds = max(head.horizons) / 10  # 0.1 s a step
    plt = drawing.pyplot()
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
    drawing.save_figure(fig, path)
    return True


def main(argv=None):
    args = parse_args(argv)
    models = os.path.join(args.data_dir, "models")
    folder = os.path.join(args.data_dir, "lookahead_data")
    head_path = os.path.join(models, "lookahead.npz")
    print(
        f"train_lookahead: {args.rounds} rounds x {args.episodes} episodes (explore {args.explore}), "
        f"{args.epochs} epochs per round, {args.heads} {args.trunk} heads reading "
        f"{'z, h and the frame centre' if args.pixels else 'z and h'}, seed {args.seed}"
    )

    # CHECKS: the agent exists, and --resume / --overwrite fit what is on disk; nothing
    # is written before they pass.
    try:
        device = devices.select_device(args.gpu)
        controller, c_sidecar, vae, v_sidecar, rnn, _ = saved_models.load_agent(
            args.data_dir, args.controller, device
        )
        run = Checkpointer.from_args(os.path.join(models, "lookahead_snapshot.npz"), args)
    except (devices.DeviceUnavailable, saved_models.CheckpointError, training.RunConflict) as e:
        cli.fail(str(e))
    identity = run_identity(args, models, f"rnn_{c_sidecar['rnn_mode']}.npz")
    if args.resume:
        check_resume(run.saved_settings(), identity, run.path)
    cli.ensure_writable_dir(models)
    cli.ensure_writable_dir(folder)
    if args.overwrite:
        for name in os.listdir(folder):
            if name.startswith("round_") and name.endswith(".npz"):
                os.remove(os.path.join(folder, name))

    # MODEL AND OPTIMIZER: the snapshot (model, Adam, epoch and batch reached) is the
    # run machinery 03 and 04 share (lib/checkpointer.py); epochs run over all rounds,
    # round k holding epochs (k - 1) * --epochs + 1 .. k * --epochs.
    config = sn.EnvConfig(**saved_models.observation_settings(v_sidecar))
    np.random.seed(derive_seed(args.seed, "lookahead/init") % 2**32)  # Chainer's initializers
    head = head_lib.make_head(
        args.heads, z_size=rnn.z_size, hidden_size=rnn.hidden_size,
        action_size=rnn.action_size, width=args.width,
        pixels=head_lib.pixel_size(vae.image_size) if args.pixels else 0, trunk=args.trunk,
    )  # fmt: skip
    head.to_device(device)
    optimizer = chainer.optimizers.Adam(alpha=args.lr)
    optimizer.setup(head)
    settings = {"config": head.config(), "identity": identity, "args": vars(args)}
    run.track(head, optimizer, settings={**settings, "versions": manifest.versions()})
    if args.resume:
        try:
            run.restore()
        except ValueError as e:
            cli.fail(str(e))
        print(f"resumed from {run.path}: epoch {run.epoch + 1}, batch {run.iteration}")
    events = run.event_log(tensorboard_log.run_dir(args.data_dir, "lookahead"))
    log_path = os.path.join(models, "lookahead_log.csv")
    log = training.CsvLog(log_path, LOG_FIELDS, run.epoch if args.resume else None, events)
    player = Player(args, vae, rnn, controller.get_flat()[None], head, config, folder, identity)
    total = args.rounds * args.epochs
    if run.epoch >= total:
        print(f"already trained for {run.epoch} epochs ({args.rounds} rounds): nothing to do")

    kept = f"nothing to resume — rerun without --resume (the rounds played, in {folder}, are kept)"
    # Ctrl-C finishes the batch or episode in hand
    with run.ending(events, nothing_saved=kept), run:
        rows = None
        for step in run.epochs(total):
            k, epoch = step // args.epochs + 1, step % args.epochs
            if epoch == 0 or rows is None:
                # PLAY AND LABEL round k (unless its rows are saved), then read all
                # rounds' rows so far: the head trains on them all
                player.play_if_missing(k, run)
                rows = player.rows(k)
                if step == 0 and run.iteration == 0:
                    head.set_normalization(*head_lib.moments(
                        rows["x"], ~rows["held"], crops_rows=rows["crops"]
                    ))  # fmt: skip
            # TRAIN one epoch
            row = train_epoch(head, optimizer, rows, k, epoch, args, run)
            row["epochs"] = step + 1
            log.append(row)
            sidecar = run.sidecar(rounds=k, epochs=epoch + 1, last=row)
            training.save_model(head_path, head, sidecar)
            print(
                f"round {k} epoch {epoch + 1}: loss {row['train_loss']:.4f}, held-out AUC "
                + ", ".join(f"{h} steps {row[f'auc_{h}']:.3f}" for h in head.horizons)
                + f"; safe pick {row['safe_pick']:.1%} of {row['mixed_rows']} mixed rows"
            )

    # OUTPUTS
    picture = os.path.join(args.data_dir, "results", "lookahead.png")
    cli.ensure_writable_dir(os.path.dirname(picture))
    with np.load(round_path(folder, args.rounds), allow_pickle=False) as f:
        part = {k: f[k] for k in f.files if k.startswith("picture_")}
    drawn = draw(picture, head, part, la.LABEL_GRID**2)
    print(f"head: {head_path} (+ lookahead.json); log: {models}/lookahead_log.csv")
    print(f"picture: {picture}" if drawn else "no held-out state with a failing action to draw")


def check_resume(saved, identity, snapshot_path):
    """Refuses, in one line, to resume a snapshot made for another agent or with other
    flags (the heads, their trunk and inputs first: they decide the weights' shapes)."""
    old = saved.get("identity", {})
    if "pixels" in old and old["pixels"] != identity["pixels"]:
        flag = "--pixels" if old["pixels"] else "--no-pixels"
        cli.fail(f"--resume: {snapshot_path} was trained with {flag} — pass {flag}, or --overwrite")
    for flag, value in (("heads", old.get("heads")), ("trunk", old.get("trunk"))):
        if value is not None and value != identity[flag]:
            cli.fail(f"--resume: {snapshot_path} was trained with --{flag} {value} — pass "
                     f"--{flag} {value}, or --overwrite to start afresh")  # fmt: skip
    differ = sorted(key for key in identity if old.get(key) != identity[key])
    if differ:
        cli.fail(
            f"--resume: {snapshot_path} was trained with other {', '.join(differ)} (another "
            "V, M or C, or other flags) — pass the flags it was made with, or --overwrite"
        )


class Player:
    """Plays and labels the rounds' episodes (`lib.control.lookahead_planner.Recorder`) and
    reads their saved rows back: C in round 1; from round 2 on, the planner with the
    head trained so far."""

    def __init__(self, args, vae, rnn, params, head, config, folder, identity):
        self.args, self.vae, self.rnn, self.params, self.head = args, vae, rnn, params, head
        self.config, self.folder, self.identity = config, folder, identity
        self.encoder = make_encoder(vae)

    def play_if_missing(self, k, run):
        """Plays round k and saves its rows, unless they are saved (Ctrl-C stops after
        the episode in hand: `training.Stopped`)."""
        path, args = round_path(self.folder, k), self.args
        if os.path.exists(path):
            return
        recorder = la.Recorder(
            args.n_envs, self.vae, self.rnn, self.params, None if k == 1 else self.head,
            la.LookaheadSettings(), args.explore, args.keep_safe, max(self.head.horizons),
            derive_seed(args.seed, "lookahead/explore", k), encoder=self.encoder,
            pixels=args.pixels,
        )  # fmt: skip
        recorder.picture_from = int(0.9 * args.episodes)  # held out: see split()
        seeds = derive_seeds(args.seed, f"lookahead/round{k}", args.episodes)
        start = time.perf_counter()
        with tqdm(total=args.episodes, desc=f"round {k}: play and label", unit="ep") as bar:
            summary, _ = evaluate(
                recorder, seeds, self.config, args.n_envs, progress=run.checking(bar)
            )
        rows = recorder.data()
        rows["n_episodes"] = np.array([args.episodes])
        rows["identity"] = np.array(json.dumps(round_identity(self.identity, k)))
        with atomic_path(path) as tmp:
            np.savez(tmp, **rows)
        print(
            f"round {k}: {'C' if k == 1 else 'the planner'} with exploration: success "
            f"{summary['success_rate']:.1%}, collisions {summary['collision_rate']:.1%}; "
            f"kept {len(rows['x'])} of {recorder.seen} rows ({time.perf_counter() - start:.0f} s)"
        )

    def rows(self, k):
        """All rounds' rows up to k (`split`), checked against this run's identity."""
        try:
            rows, held = split(load_rounds(self.folder, k, self.identity))
        except ValueError as e:
            cli.fail(str(e))
        if not self.args.pixels:
            rows["crops"] = None
        rows["held"] = held
        return rows


def train_epoch(head, optimizer, rows, k, epoch, args, run):
    """One epoch of round k over its training rows (each head its own batch order, from
    (seed, round, epoch, head)), then the held-out metrics: the log's row."""
    train_idx, held_idx = np.flatnonzero(~rows["held"]), np.flatnonzero(rows["held"])
    crops = rows["crops"]
    orders = [  # the first head's order is that of a single head
        np.random.default_rng(
            derive_seed(args.seed, "lookahead/epoch", k, epoch, *([m] if m else []))
        ).permutation(train_idx)
        for m in range(args.heads)
    ]
    means = training.EpochMeans(["train_loss"], run.partial)
    start = time.perf_counter()
    n_batches = -(-len(train_idx) // args.batch_size)
    with run.batches(n_batches, f"round {k} epoch {epoch + 1}/{args.epochs}") as bar:
        for it in bar:
            loss = 0
            for member, order in zip(head_lib.members(head), orders):
                b = order[it * args.batch_size : (it + 1) * args.batch_size]
                x = head_lib.row_features(rows["x"][b], None if crops is None else crops[b])
                loss += head_lib.loss(member, x, rows["actions"][b], rows["fail"][b])
            value = run.check_loss(float(loss.array) / args.heads, "the look-ahead loss")
            head.cleargrads()
            loss.backward()
            optimizer.update()
            means.add({"train_loss": value}, len(b))
            run.batch_done(means.state())
    metrics = head_lib.held_out_metrics(
        head, rows["x"][held_idx], rows["actions"][held_idx], rows["fail"][held_idx],
        la.LABEL_GRID**2, crops_rows=None if crops is None else crops[held_idx],
    )  # fmt: skip
    row = {"round": k, "epoch": epoch + 1, "rows": len(train_idx)}
    row["train_loss"] = round(means.mean("train_loss"), 5)
    row.update({key: round(v, 4) for key, v in metrics.items()})
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


if __name__ == "__main__":
    main()
