"""Trains M's pixel mover: the dream of the next frames, made by moving the last frame.

Beyond the paper (lib/models/pixel_mover.py). The robot's own motion moves the
egocentric view by a known rotation and shift; the people walk on at constant velocity.
A small convolutional net reads frame t and frame t - 1 (moved into frame t's
coordinates) and gives a velocity field; the dream of frame t + k samples frame t once,
where the composite ego-motion and k steps of that velocity bring each pixel. V then
encodes the dreamed frames (check_world_model.py's "mover" rows).

It learns from 02's real episodes (frames and actions; no label of the true state): the
squared error of the dreamed frames t + 1 .. t + --horizon against the real ones, where
the dream's source lies inside frame t. Each epoch draws --batches batches of
--batch-size random start frames from the first --episodes training episodes; the
log's held-out loss is on 256 fixed starts of the test episodes, beside the loss of the
ego-motion warp alone (a mover whose field is 0).

Reads:
    data/rnn_data/{train,test}/*.npz: 02's episodes (frames and actions).
Writes:
    data/models/mover.npz (+ mover.json): the mover, its config and the epochs done.
    data/models/mover_snapshot.npz (+ .json): the run as 03's and 04's are
        (lib/checkpointer.py); --resume continues it exactly.
    data/models/mover_log.csv: per epoch, the training loss and the held-out losses.
    data/results/mover.png: held-out starts: the real frames t .. t + horizon over the
        mover's dream and the warp's.
"""

import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import glob
import os
import time

import chainer
import numpy as np
from tqdm import tqdm

from lib import cli, drawing, manifest, tensorboard_log, training
from lib.checkpointer import Checkpointer
from lib.models import pixel_mover
from lib.seeding import derive_seed

LOG_FIELDS = ["epoch", "train_loss", "heldout_loss", "heldout_warp_loss", "seconds"]
HELD_OUT_STARTS = 256
# flags that may change between a run and its --resume (--epochs: train on further)
RUN_ONLY = ("resume", "overwrite", "max_iterations", "threads", "data_dir", "snapshot_interval",
            "epochs")  # fmt: skip
STILL_FRAMES = 4000  # frames the robot's still body is found from


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=cli.positive_int, default=5, help="epochs to train")
    p.add_argument(
        "--batches", type=cli.positive_int, default=200, help="batches of random starts an epoch"
    )
    p.add_argument("--batch-size", type=cli.positive_int, default=16, help="start frames a batch")
    p.add_argument(
        "--horizon",
        type=cli.positive_int,
        default=8,
        help="steps dreamed from each start frame, each scored against the real frame",
    )
    p.add_argument("--lr", type=cli.positive_float, default=1e-3, help="Adam's learning rate")
    p.add_argument(
        "--channels", type=cli.positive_int, default=24, help="channels of the net's layers"
    )
    p.add_argument(
        "--motion",
        choices=pixel_mover.MOTIONS,
        default="sample",
        help="sample: each dreamed pixel samples frame t back along the velocity field; "
        "splat: a moving layer (a share of each pixel, learnt) is carried forward by its "
        "velocity and splatted, over the rest warped as the room (lib/models/pixel_mover.py)",
    )
    p.add_argument(
        "--episodes",
        type=cli.positive_int,
        default=600,
        help="training episodes read (the first ones of data/rnn_data/train; frames take "
        "about 0.8 MB an episode in memory)",
    )
    p.add_argument("--view-size", type=cli.positive_float, default=8.0,
                   help="metres the egocentric frames cover (02's --view-size)")  # fmt: skip
    cli.add_common_args(p)
    cli.add_run_args(p, "data/models/mover_snapshot.npz")
    args = p.parse_args(argv)
    cli.check_run_args(p, args)
    return args


def read_episodes(folder: str, limit: int | None, need: int):
    """Frames and actions of the episodes in `folder` with more than `need` frames:
    (list of (T + 1, S, S, 3) uint8, list of (T, 2) float32)."""
    files = sorted(glob.glob(os.path.join(folder, "*.npz")))
    frames, actions = [], []
    for path in files:
        if limit is not None and len(frames) >= limit:
            break
        with np.load(path, allow_pickle=False) as f:
            if "obs" not in f.files or "action" not in f.files:
                cli.fail(f"{path} holds no frames and actions: rerun 02_generate_rnn_data.py")
            if len(f["obs"]) > need:
                frames.append(f["obs"])
                actions.append(f["action"].astype(np.float32))
    return frames, actions


def starts(frames, horizon: int, n: int, rng):
    """(n, 2) int: random (episode, t) with t >= 1 and t + horizon inside the episode."""
    lengths = np.array([len(f) for f in frames])
    e = rng.integers(len(frames), size=n)
    t = 1 + (rng.random(n) * (lengths[e] - horizon - 1)).astype(np.int64)
    return np.stack([e, t], axis=1)


def batch(frames, actions, picks, horizon: int):
    """The arrays of `PixelMover.loss` for the (episode, t) picks."""
    cur = np.stack([frames[e][t] for e, t in picks])
    prev = np.stack([frames[e][t - 1] for e, t in picks])
    a_prev = np.stack([actions[e][t - 1] for e, t in picks])
    acts = np.stack([actions[e][t : t + horizon] for e, t in picks])
    targets = np.stack([frames[e][t + 1 : t + horizon + 1] for e, t in picks])
    targets = pixel_mover.to_planes(targets.reshape(-1, *targets.shape[2:]))
    return cur, prev, a_prev, acts, targets.reshape(len(picks), horizon, *targets.shape[1:])


def loss_of(mover, cur, prev, a_prev, acts, targets):
    planes = pixel_mover.to_planes(cur)
    aligned = mover.align_previous(pixel_mover.to_planes(prev), a_prev)
    return mover.loss(planes, aligned, acts, targets)


def held_out_losses(mover, held, horizon):
    """(mover's loss, the warp alone's loss) on the held-out starts."""
    losses, warps = [], []
    zero = pixel_mover.PixelMover(mover.image_size, mover.view_size, 1)  # u = 0: the warp
    zero.still[...] = mover.still
    with chainer.no_backprop_mode(), chainer.using_config("train", False):
        for i in range(0, len(held[0]), 64):
            part = [x[i : i + 64] for x in held]
            losses.append(float(loss_of(mover, *part).array) * len(part[0]))
            warps.append(float(loss_of(zero, *part).array) * len(part[0]))
    n = len(held[0])
    return sum(losses) / n, sum(warps) / n


def draw(path, mover, held, horizon, rows=3):
    """Real frames t .. t + horizon, the mover's dream and the warp's, per start."""
    cur, prev, a_prev, acts, _ = (x[:rows] for x in held)
    dream = mover.dream(cur, prev, a_prev, acts)
    zero = pixel_mover.PixelMover(mover.image_size, mover.view_size, 1)
    zero.still[...] = mover.still
    warp = zero.dream(cur, prev, a_prev, acts)
    grid_rows = []
    targets = held[4][:rows]
    for r in range(len(cur)):
        truth = [cur[r]] + [
            (np.clip(targets[r, k].transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
            for k in range(horizon)
        ]
        grid_rows.append([drawing.upscale(f, 2) for f in truth])
        grid_rows.append([drawing.upscale(f, 2) for f in [cur[r], *dream[r]]])
        grid_rows.append([drawing.upscale(f, 2) for f in [cur[r], *warp[r]]])
    image = drawing.caption(
        drawing.grid(grid_rows),
        f"held-out starts, t .. t+{horizon}: real (top), the mover's dream, the warp alone",
    )
    drawing.save_png(path, image)


def main(argv=None):
    args = parse_args(argv)
    models = os.path.join(args.data_dir, "models")
    root = os.path.join(args.data_dir, "rnn_data")
    # CHECKS: episodes exist, and --resume / --overwrite fit what is on disk
    frames, actions = read_episodes(os.path.join(root, "train"), args.episodes, args.horizon + 1)
    if not frames:
        cli.fail(
            f"no training episode longer than {args.horizon + 1} frames in {root}/train: "
            "run 02_generate_rnn_data.py first, or lower --horizon"
        )
    test_frames, test_actions = read_episodes(os.path.join(root, "test"), 200, args.horizon + 1)
    if not test_frames:
        tenth = max(1, len(frames) // 10)
        test_frames, test_actions = frames[-tenth:], actions[-tenth:]
        print("no test episodes: the held-out loss reads the last tenth of the training ones")
    image_size = frames[0].shape[1]
    try:
        run = Checkpointer.from_args(os.path.join(models, "mover_snapshot.npz"), args)
    except training.RunConflict as e:
        cli.fail(str(e))
    cli.ensure_writable_dir(models)

    # MODEL AND OPTIMIZER
    np.random.seed(derive_seed(args.seed, "mover/init") % 2**32)  # Chainer's initializers
    mover = pixel_mover.PixelMover(image_size, args.view_size, args.channels, args.motion)
    pool = np.concatenate([f[:: max(1, len(f) // 8)] for f in frames])
    pick = np.random.default_rng(derive_seed(args.seed, "mover/still")).permutation(len(pool))
    mover.set_still(pool[pick[:STILL_FRAMES]])
    optimizer = chainer.optimizers.Adam(alpha=args.lr)
    optimizer.setup(mover)
    rng = np.random.default_rng(derive_seed(args.seed, "mover/batches"))
    settings = {
        "config": mover.config(),
        "args": {k: v for k, v in vars(args).items() if k not in RUN_ONLY},
    }
    run.track(mover, optimizer, rngs={"batch_rng": rng},
              settings={**settings, "versions": manifest.versions()})  # fmt: skip
    if args.resume:
        saved = run.saved_settings()
        saved_args = {k: v for k, v in saved.get("args", {}).items() if k not in RUN_ONLY}
        if saved.get("config") != mover.config() or saved_args != settings["args"]:
            cli.fail(f"--resume: {run.path} was trained with other flags — pass the same "
                     "ones, or --overwrite")  # fmt: skip
        try:
            run.restore()
        except ValueError as e:
            cli.fail(str(e))
        print(f"resumed from {run.path}: epoch {run.epoch + 1}, batch {run.iteration}")
    held_rng = np.random.default_rng(derive_seed(args.seed, "mover/held-out"))
    held = batch(test_frames, test_actions,
                 starts(test_frames, args.horizon, HELD_OUT_STARTS, held_rng), args.horizon)  # fmt: skip
    events = run.event_log(tensorboard_log.run_dir(args.data_dir, "mover"), args.batches)
    log = training.CsvLog(os.path.join(models, "mover_log.csv"), LOG_FIELDS,
                          run.epoch if args.resume else None, events)  # fmt: skip
    path = os.path.join(models, "mover.npz")
    if run.epoch >= args.epochs:
        print(f"already trained for {run.epoch} epochs: nothing to do")

    # TRAIN: Ctrl-C finishes the batch in hand and saves a snapshot
    with run.ending(events), run:
        for epoch in run.epochs(args.epochs):
            means = training.EpochMeans(["train_loss"], run.partial)
            start = time.perf_counter()
            with run.batches(args.batches, f"epoch {epoch + 1}/{args.epochs}") as bar:
                for _ in bar:
                    picks = starts(frames, args.horizon, args.batch_size, rng)
                    loss = loss_of(mover, *batch(frames, actions, picks, args.horizon))
                    value = run.check_loss(float(loss.array), "the mover's loss")
                    mover.cleargrads()
                    loss.backward()
                    optimizer.update()
                    means.add({"train_loss": value}, len(picks))
                    run.batch_done(means.state())
            held_loss, warp_loss = held_out_losses(mover, held, args.horizon)
            row = {"epoch": epoch + 1, "train_loss": round(means.mean("train_loss"), 6),
                   "heldout_loss": round(held_loss, 6), "heldout_warp_loss": round(warp_loss, 6),
                   "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
            log.append(row)
            training.save_model(path, mover, run.sidecar(epochs=epoch + 1, last=row))
            tqdm.write(
                f"epoch {epoch + 1}: loss {row['train_loss']:.5f}, held-out {held_loss:.5f} "
                f"(the warp alone {warp_loss:.5f})"
            )

    # OUTPUTS
    picture = os.path.join(args.data_dir, "results", "mover.png")
    cli.ensure_writable_dir(os.path.dirname(picture))
    draw(picture, mover, held, args.horizon)
    print(f"mover: {path} (+ mover.json); log: {models}/mover_log.csv; picture: {picture}")


if __name__ == "__main__":
    main()
