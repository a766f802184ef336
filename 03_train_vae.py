"""Trains V, the convolutional VAE, on the frames of 01's rollouts.

Reads:
    data/vae_data/train/*.npz, data/vae_data/test/*.npz: `obs` (T+1, 64, 64, 3)
        uint8 (see lib/env/rollouts.py), and with --task-weight their `teacher`
        labels (01 --labels). Frames go through a uint8 memory-mapped cache built
        once in data/vae_data/cache/.
Writes:
    data/models/vae.npz: the model (Chainer save_npz), after every epoch.
    data/models/vae.json: sizes to rebuild it (ConvVAE(**config)), KL tolerance,
        epochs done, last losses, data provenance.
    data/models/vae_snapshot.npz: model + Adam state + epoch + shuffled order +
        RNG states, for --resume (exact: the same losses as an uninterrupted run).
    data/models/vae_log.csv: per epoch, train and held-out loss / rec / KL (and,
        with --task-weight, the task loss and the task head's held-out R²).
    data/models/vae_loss.png: those curves.
    data/results/vae_training/epoch_NNNN.png: held-out frames over their
        reconstructions, after each epoch.

Ctrl-C finishes the current batch, saves the snapshot and exits; --resume
continues. A NaN or infinite loss stops training and keeps the last good
snapshot.
"""

import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import os
import time

import chainer
import numpy as np

from lib import cli, devices, drawing, manifest, progress, tensorboard_log, training
from lib.checkpointer import Checkpointer
from lib.data import frames
from lib.kernels.fast_adam import FastAdam
from lib.models.task_head import task_r2, task_targets
from lib.models.vae import (
    KEYPOINT_ENC_CHANNELS,
    PAPER_CONFIG,
    SPATIAL_ENC_CHANNELS,
    SPATIAL_MAP_LAYERS,
    ConvVAE,
    VAELoss,
    encoder_output_size,
)
from lib.seeding import derive_seed

TASK_SIZE = 2  # the task head predicts the teacher's two action numbers

LOG_FIELDS = [
    "epoch",
    "iterations",
    "train_loss",
    "train_rec",
    "train_kl",
    "test_loss",
    "test_rec",
    "test_kl",
    "train_task",
    "test_task",
    "test_task_r2",
    "seconds",
]
CURVES = (
    [
        ("train_loss", "train loss"),
        ("test_loss", "held-out loss"),
        ("train_rec", "train reconstruction"),
        ("test_rec", "held-out reconstruction"),
    ],
    "VAE loss per frame (summed squared error + floored KL)",
)
HELD_OUT_BATCH = 500  # frames per held-out batch: no graph is kept, so it can exceed training's


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=cli.positive_int, default=1000, help="epochs to train in total")
    p.add_argument(
        "--max_samples",
        "--max-samples",
        dest="max_samples",
        type=cli.positive_int,
        default=None,
        help="use at most this many training rollouts (default: all)",
    )
    p.add_argument("--batch-size", type=cli.positive_int, default=100, help="frames per batch")
    p.add_argument(
        "--z-size",
        type=cli.positive_int,
        default=None,
        help=f"latent size (default: the paper's {PAPER_CONFIG['z_size']}; with --spatial K, the "
        "map's cells times K: 36 K for 64-pixel frames)",
    )
    p.add_argument("--kl-tolerance", type=float, default=0.5, help="KL floor per latent dim (nats)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    p.add_argument(
        "--object-weight",
        type=float,
        default=1.0,
        help="weight of coloured pixels (goal, people, robot) in the reconstruction error; "
        "1 is the paper's plain squared error (see lib/models/vae.py, object_weights)",
    )
    p.add_argument(
        "--goal-weight",
        type=float,
        default=1.0,
        help="a further factor on the goal's (green) pixels in the reconstruction error, on "
        "top of --object-weight; 1 weighs the goal like the people (see lib/models/vae.py, "
        "goal_weights)",
    )
    p.add_argument(
        "--keypoints",
        type=cli.non_negative_int,
        default=0,
        help="0: the paper's encoder (z read from the last conv's flattened map); K > 0: "
        "a spatial-autoencoder encoder, two convs then K keypoints (each the expected "
        "position of a spatial softmax) that z is linear in (see lib/models/vae.py)",
    )
    p.add_argument(
        "--spatial",
        type=cli.non_negative_int,
        default=0,
        help="0: the paper's z (a dense layer on the last conv's map); K > 0: z is a map, "
        "three convs to a 6x6 map then K latents per cell, each linear in its cell's "
        "features, so a linear C reads where things are (see lib/models/vae.py)",
    )
    p.add_argument(
        "--map-side",
        type=int,
        choices=sorted(SPATIAL_MAP_LAYERS),
        default=6,
        help="with --spatial: the side of z's map, 6 (three convs; cells 1 m apart in the "
        "8 m view) or 14 (two convs; 0.5 m, a person's width), for a map M that tracks "
        "people (z, M's h and C's input grow 196/36 = 5.4 times)",
    )
    p.add_argument(
        "--task-weight",
        type=float,
        default=0.0,
        help="0: the paper's loss. > 0: V gains a linear head from z's mean to the action "
        "that 01's --labels teacher took at each frame, and this weight times its squared "
        "error joins the loss, so z keeps linearly what a linear C needs (needs 01 "
        "--labels; see lib/models/task_head.py)",
    )
    cli.add_gpu_arg(p, "V")
    cli.add_run_args(p, "data/models/vae_snapshot.npz")
    p.add_argument(
        "--test-frames",
        type=cli.non_negative_int,
        default=2000,
        help="held-out frames scored after each epoch (0: none)",
    )
    cli.add_common_args(p)
    args = p.parse_args(argv)
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if not args.object_weight >= 1:
        p.error(f"--object-weight must be >= 1, got {args.object_weight}")
    if not args.goal_weight >= 1:
        p.error(f"--goal-weight must be >= 1, got {args.goal_weight}")
    if not args.task_weight >= 0:
        p.error(f"--task-weight must be >= 0, got {args.task_weight}")
    if args.kl_tolerance < 0:
        p.error(f"--kl-tolerance must be >= 0, got {args.kl_tolerance}")
    if args.spatial and args.keypoints:
        p.error("--spatial and --keypoints are two different encoders: choose one")
    if args.map_side != 6 and not args.spatial:
        p.error(f"--map-side {args.map_side} sizes a spatial z's map: add --spatial K")
    cli.check_run_args(p, args)
    return args


def held_out_loss(
    vae, store, kl_tolerance, limit, seed, batch_size=HELD_OUT_BATCH, task_weight=0.0
):
    """Mean loss / rec / KL over up to `limit` frames (fixed noise, no graph); with a
    task weight and labelled frames, also the task loss and the task head's R² (the
    fraction of the targets' variance it explains, over both actions)."""
    n = min(limit, len(store))
    task = bool(task_weight) and store.teacher is not None
    loss_fn = VAELoss(
        vae, kl_tolerance, rng=np.random.default_rng(seed), task_weight=task_weight if task else 0
    )
    sums = {"loss": 0.0, "rec": 0.0, "kl": 0.0, **({"task": 0.0} if task else {})}
    reporter = chainer.Reporter()
    reporter.add_observer("v", loss_fn)
    targets = []
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        for start in range(0, n, batch_size):
            indices = np.arange(start, min(start + batch_size, n))
            x = store.batch(indices)
            labels = store.labels(indices) if task else None
            obs = {}
            with reporter.scope(obs):
                loss_fn(x, labels)
            for k in sums:
                sums[k] += float(obs[f"v/{k}"].array) * len(x)
            if task:
                targets.append(task_targets(labels))
    out = {k: v / n for k, v in sums.items()}
    if task:
        # The summed "task" is the head's residual sum of squares over the labelled rows.
        out["task_r2"] = task_r2(sums["task"], *map(np.concatenate, zip(*targets)))
    return out


def save_reconstructions(vae, sample, folder, epoch):
    """`folder`/epoch_NNNN.png: the `sample` frames over their reconstructions; returns
    the picture (uint8, H x W x 3)."""
    path = os.path.join(folder, f"epoch_{epoch:04d}.png")
    title = f"epoch {epoch}: frames (top) and reconstructions of their mean z (bottom)"
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        mu, _ = vae.encode(sample)
        recon = devices.to_host(vae.decode(mu))
    recon = (np.clip(recon, 0, 1) * 255 + 0.5).astype(np.uint8)
    image = drawing.caption(drawing.upscale(drawing.grid([list(sample), list(recon)]), 2), title)
    drawing.save_png(path, image)
    return image


def _with_teacher(cached):
    """(cache path, its teacher labels' path or None) from `build_cache`'s result."""
    return cached[0], cached[1].get("teacher")


def load_frames(vae_root, max_samples, test_frames, image_size):
    """The train split's frames and the test split's (None without one, or with
    --test-frames 0), through their memory-mapped caches; prints what they hold."""

    def cache(split, limit):
        with progress.callback(f"caching {split} frames", "file") as show:
            return frames.build_cache(os.path.join(vae_root, split), limit, image_size, show)

    try:
        train_npy, train_index = cache("train", max_samples)
    except frames.NoFramesError as e:
        cli.fail(f"{e} — run 01_generate_vae_data.py first")
    train = frames.FrameStore(train_npy, train_index.get("teacher"))
    test = None
    if test_frames and os.path.isdir(os.path.join(vae_root, "test")):
        try:
            test = frames.FrameStore(*_with_teacher(cache("test", None)))
        except frames.NoFramesError:
            test = None
    skipped = len(train_index["skipped"])
    bad = f" ({skipped} bad files skipped, see {train_npy[:-4]}.json)" if skipped else ""
    train_text = f"{train_index['frames']} frames from {train_index['rollouts']} rollouts"
    test_text = f"{len(test)} frames" if test else None
    print(training.data_line(train_text + bad, test_text, "no held-out loss"))
    return train, test


def resume(run, config, n_frames):
    """Restores `run` from its snapshot after checking it fits; returns the resumed
    epoch's shuffled order (None at an epoch boundary)."""
    old = run.saved_settings()
    if old.get("config", config) != config:
        cli.fail(
            f"{run.path} is a VAE with {old.get('config')}, not {config} — "
            "use the same --z-size, --keypoints and --spatial, or --overwrite to start again"
        )
    try:
        perm = run.restore().get("perm")
    except ValueError as e:
        cli.fail(str(e))
    if perm is not None and len(perm) != n_frames:
        cli.fail(
            f"{run.path} was trained on {len(perm)} frames, not {n_frames} — same --max_samples please"
        )
    print(f"resumed from {run.path}: epoch {run.epoch + 1}, batch {run.iteration}")
    return perm


def epoch_line(row, seconds, frames):
    """The line printed after an epoch."""
    held = (
        f", held-out {row['test_loss']:.1f} (rec {row['test_rec']:.1f}, KL {row['test_kl']:.2f})"
        if "test_loss" in row
        else ""
    )
    task = f", task {row['train_task']:.3f}" if "train_task" in row else ""
    if "test_task_r2" in row:
        task += f" (held-out R² {row['test_task_r2']:.3f})"
    return f"epoch {row['epoch']}: train {row['train_loss']:.1f} (rec {row['train_rec']:.1f}, KL {row['train_kl']:.2f}){held}{task}, {seconds:.1f} s ({frames / seconds:.0f} frames/s)"


def vae_config(args, image_size, data_manifest, vae_root):
    """V's configuration from the flags: the paper's, with --z-size, --spatial (z a map
    of the encoder's output size, --map-side's; a --z-size that does not match it is refused in one
    line), --keypoints and --task-weight's head (refused, in one line, when 01's frames
    have no teacher's labels)."""
    if args.task_weight and not data_manifest.get("identity", {}).get("labels"):
        cli.fail(
            f"--task-weight needs frames labelled by a teacher, and {vae_root} has none — "
            "re-run 01_generate_vae_data.py with --labels oracle (with --overwrite, or into "
            "another --data-dir), or drop --task-weight"
        )
    z_size = args.z_size or PAPER_CONFIG["z_size"]
    enc_channels = list(SPATIAL_ENC_CHANNELS[: SPATIAL_MAP_LAYERS[args.map_side]])
    if args.spatial:
        side = encoder_output_size(image_size, len(enc_channels), PAPER_CONFIG["enc_kernel"])
        if args.z_size not in (None, side * side * args.spatial):
            cli.fail(
                f"--spatial {args.spatial} makes z a {side}x{side}x{args.spatial} map "
                f"({side * side * args.spatial} numbers), not --z-size {args.z_size}: "
                "drop --z-size or make it match"
            )
        z_size = side * side * args.spatial
    config = dict(PAPER_CONFIG, z_size=z_size, image_size=image_size)
    if args.keypoints:
        config.update(keypoints=args.keypoints, enc_channels=list(KEYPOINT_ENC_CHANNELS))
    if args.spatial:
        config.update(spatial=args.spatial, enc_channels=enc_channels)
    if args.task_weight:
        config.update(task_size=TASK_SIZE)
    return config


def shown_losses(means):
    """The progress bar's losses: the epoch's means so far."""
    shown = {"loss": f"{means['loss']:.1f}", "rec": f"{means['rec']:.1f}"}
    shown["kl"] = f"{means['kl']:.2f}"
    if "task" in means:
        shown["task"] = f"{means['task']:.3f}"
    return shown


def held_out_row(vae, test, args):
    """The log's held-out columns (`test_<loss>`), on --test-frames frames with the same
    noise every epoch; none without held-out frames."""
    if test is None:
        return {}
    held = held_out_loss(
        vae, test, args.kl_tolerance, args.test_frames, derive_seed(args.seed, "vae/test"),
        task_weight=args.task_weight,
    )  # fmt: skip
    return {f"test_{k}": v for k, v in held.items()}


def main(argv=None):
    args = parse_args(argv)
    vae_root = os.path.join(args.data_dir, "vae_data")
    models = os.path.join(args.data_dir, "models")
    model_path = os.path.join(models, "vae.npz")
    log_path = os.path.join(models, "vae_log.csv")
    progress_dir = os.path.join(args.data_dir, "results", "vae_training")
    print(
        f"03: VAE z={args.z_size or ('a map' if args.spatial else PAPER_CONFIG['z_size'])}, batch {args.batch_size}, lr {args.lr}, KL tolerance "
        f"{args.kl_tolerance}, {args.epochs} epochs, max_samples {args.max_samples}, seed {args.seed}"
    )

    # CHECKS: inputs exist and fit; nothing is written before this passes.
    train_dir = os.path.join(vae_root, "train")
    if not os.path.isdir(train_dir):
        cli.fail(f"{train_dir} not found — run 01_generate_vae_data.py first")
    try:
        run = Checkpointer.from_args(os.path.join(models, "vae_snapshot.npz"), args)
        device = devices.select_device(args.gpu)
    except (training.RunConflict, devices.DeviceUnavailable) as e:
        cli.fail(str(e))
    cli.ensure_writable_dir(models)
    data_manifest = manifest.read_json(os.path.join(vae_root, "manifest.json")) or {}
    image_size = data_manifest.get("identity", {}).get("env", {}).get("image_size", 64)
    config = vae_config(args, image_size, data_manifest, vae_root)

    # INPUTS: frame caches (built once, memory-mapped).
    train, test = load_frames(vae_root, args.max_samples, args.test_frames, image_size)
    if args.task_weight and train.teacher is None:
        cli.fail(
            f"--task-weight: some rollouts in {train_dir} have no teacher labels — re-run "
            "01_generate_vae_data.py --labels oracle --overwrite"
        )

    # MODEL AND OPTIMIZER
    np.random.seed(derive_seed(args.seed, "vae/init") % 2**32)  # Chainer's initializers
    vae = ConvVAE(**config)
    vae.to_device(device)
    noise_rng = np.random.default_rng(derive_seed(args.seed, "vae/noise"))
    shuffle_rng = np.random.default_rng(derive_seed(args.seed, "vae/shuffle"))
    loss_fn = VAELoss(
        vae,
        args.kl_tolerance,
        noise_rng,
        object_weight=args.object_weight,
        goal_weight=args.goal_weight,
        task_weight=args.task_weight,
    )
    optimizer = FastAdam(alpha=args.lr)
    optimizer.setup(vae)
    run.track(
        vae,
        optimizer,
        rngs={"noise_rng": noise_rng, "shuffle_rng": shuffle_rng},
        settings={
            "config": config,
            **{k: getattr(args, k) for k in ("kl_tolerance", "object_weight", "goal_weight")},
            "task_weight": args.task_weight,
            "data": {"vae_data": vae_root, "identity": data_manifest.get("identity")},
            "args": vars(args),
        },
    )
    perm = resume(run, config, len(train)) if args.resume else None
    n_batches = -(-len(train) // args.batch_size)
    events = run.event_log(tensorboard_log.run_dir(args.data_dir, "vae"), n_batches)
    log = training.CsvLog(log_path, LOG_FIELDS, run.epoch if args.resume else None, events)
    sample = (test or train).batch(np.linspace(0, len(test or train) - 1, 8).astype(int))

    # TRAINING LOOP
    reporter = chainer.Reporter()
    reporter.add_observer("v", loss_fn)
    losses = ("loss", "rec", "kl", "task") if args.task_weight else ("loss", "rec", "kl")
    if run.epoch >= args.epochs:
        print(f"already trained for {run.epoch} epochs (--epochs {args.epochs}): nothing to do")
    with run.ending(events), run:
        for epoch in run.epochs(args.epochs):
            if perm is None or run.iteration == 0:
                perm = shuffle_rng.permutation(len(train))
            # A resumed epoch carries the sums of its batches before the interruption.
            means = training.EpochMeans(losses, run.partial)
            start, session_frames = time.perf_counter(), 0
            with run.batches(n_batches, f"epoch {epoch + 1}/{args.epochs}") as bar:
                for it in bar:
                    batch = perm[it * args.batch_size : (it + 1) * args.batch_size]
                    x = train.batch(batch)
                    labels = train.labels(batch) if args.task_weight else None
                    obs = {}
                    with reporter.scope(obs):
                        loss = loss_fn(x, labels)
                    run.check_loss(float(loss.array), "the VAE loss")
                    vae.cleargrads()
                    loss.backward()
                    optimizer.update()
                    means.add(obs, len(x), prefix="v/")
                    session_frames += len(x)
                    bar.set_postfix(shown_losses(means.means()))
                    events.batch(means.since_last(), epoch * n_batches + it + 1)
                    run.batch_done(means.state(), extra={"perm": perm})
            seconds = time.perf_counter() - start
            row = {"epoch": epoch + 1, "iterations": (epoch + 1) * n_batches}
            row.update(seconds=round(seconds, 2), **means.means(prefix="train_"))
            row.update(held_out_row(vae, test, args))
            log.append(row)
            training.plot_curves(log, os.path.join(models, "vae_loss.png"), *CURVES)
            picture = save_reconstructions(vae, sample, progress_dir, epoch + 1)
            events.image("reconstructions", picture, epoch + 1)
            training.save_model(model_path, vae, run.sidecar(epochs=epoch + 1, last=row))
            print(epoch_line(row, seconds, session_frames))

    # OUTPUTS
    print(
        f"model: {model_path} (+ {os.path.basename(training.sidecar_path(model_path))}); log: {log_path}; curves: {os.path.join(models, 'vae_loss.png')}; reconstructions: {progress_dir}/"
    )


if __name__ == "__main__":
    main()
