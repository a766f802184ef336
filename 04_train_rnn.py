"""Trains M, the MDN-LSTM, on 02's episodes encoded by V.

Reads:
    data/models/vae.npz (+ vae.json): V from 03_train_vae.py.
    data/rnn_data/{train,test}/*.npz: episodes (see lib/env/rollouts.py), encoded
        once by V into data/rnn_data/cache/latents_<split>_<hash>.npz (rebuilt
        only when V's weights or the episode files change; lib/data/latents.py).
Writes:
    data/models/rnn_<mode>.npz: the model (Chainer save_npz), after every epoch.
    data/models/rnn_<mode>.json: sizes to rebuild it (MDNRNN(**config)), mode,
        V's provenance, held-out metrics and baselines.
    data/models/rnn_<mode>_snapshot.npz: model + Adam state + epoch + batch,
        for --resume (exact).
    data/models/rnn_<mode>_log.csv and rnn_<mode>_loss.png: per epoch, train and
        held-out NLL (per latent dimension per step, nats), the constant-z and
        copy-z baselines, reward MSE and done accuracy / recall when present,
        with --task-weight the task head's loss and held-out R², and with
        --rollout-steps the rollout loss and its two parts (z, endings), which
        train_loss leaves out.

Modes (the original README's): `normal` teacher-forces whole episodes with
truncated BPTT (--seq-len); `window` trains on random windows of --window steps
with the state reset at each window; `reward` is normal plus the reward and done
heads (or, with --outcome-head, an outcome classifier and a bounded reward head:
see lib/models/mdn_rnn.py); `dream` is reward plus scheduled sampling: with a probability rising
linearly to --ss-max over the epochs, an input z_t is replaced by M's own sample
of it (drawn from M's teacher-forced prediction at t-1, so the whole-sequence
fast LSTM still applies), which keeps M stable when it is fed its own dreams.
z is re-sampled from V's (mu, logvar) every epoch, as in the paper (--z-source).

Beyond the paper, for the map M (--arch map) as a simulator: --open-loop K
replaces whole runs of K inputs by M's chained predictions instead of single ones,
and --rollout-steps K adds a loss on K-step open-loop dreams from real frames,
backpropagated through every dreamt step (lib/models/rollout_loss.py).

--task-weight (beyond the paper) adds a linear head from [z_t, h_t], the very
input of the linear C, to the action 02's --labels teacher took at each step.
Its squared error, through the LSTM, makes h keep what the frames' history says
about the task (the people's motion) in a form a linear C can read. The agent
never reads the head.
"""

import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import math
import os
import time

import chainer
import numpy as np

from lib import cli, devices, manifest, progress, tensorboard_log, training
from lib.checkpointer import Checkpointer
from lib.data import latents, rnn_data
from lib.diagnostics.open_loop_strip import open_loop_picture
from lib.env import socnavenv as sn
from lib.env.rollouts import load_episode
from lib.fileio import file_hash
from lib.kernels.fast_adam import FastAdam
from lib.models import saved_models
from lib.models.map_rnn import ARCHS, build_rnn, constructor_defaults
from lib.models.mdn_rnn import (
    MODES,
    OUTCOME_CLASSES,
    MDNRNNLoss,
    calibrated_done_logit,
    done_logit_threshold,
    mdn_nll,
)
from lib.models.rollout_loss import rollout_loss
from lib.models.task_head import task_r2, task_targets
from lib.seeding import derive_seed

# The done head's default positive weight: #negatives / #positives, at most this
# (also each ending's weight in the outcome head's loss).
MAX_DONE_POS_WEIGHT = 50.0
# The outcome head's running-step reward is bounded by this times the largest
# running-step penalty in the training data.
SHAPING_MARGIN = 1.25
LOG_FIELDS = [
    "epoch",
    "train_loss",
    "train_nll",
    "train_reward_loss",
    "train_done_loss",
    "test_nll",
    "constant_z_nll",
    "copy_z_nll",
    "test_reward_mse",
    "test_done_accuracy",
    "test_done_recall",
    "train_task_loss",
    "train_rollout_loss",
    "train_rollout_z_loss",
    "train_rollout_end_loss",
    "test_task_loss",
    "test_task_r2",
    "ss_prob",
    "seconds",
]
CURVES = [
    ("train_nll", "train NLL"),
    ("test_nll", "held-out NLL"),
    ("constant_z_nll", "baseline: constant z"),
    ("copy_z_nll", "baseline: next z = current z"),
]


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=cli.positive_int, default=1000, help="epochs to train in total")
    p.add_argument("--mode", choices=MODES, default="window", help="training mode (see above)")
    p.add_argument("--batch-size", type=cli.positive_int, default=100, help="sequences per batch")
    p.add_argument(
        "--seq-len", type=cli.positive_int, default=100, help="BPTT chunk (normal/reward/dream)"
    )
    p.add_argument(
        "--window", type=cli.positive_int, default=32, help="window length (window mode)"
    )
    p.add_argument(
        "--arch",
        choices=ARCHS,
        default="lstm",
        help="M's network: lstm, the paper's dense MDN-LSTM (--hidden units); map, a "
        "convolutional MDN-LSTM over a spatial V's latent map whose state and predictions "
        "move with the robot's own motion (beyond the paper; needs 03 --spatial and, in "
        "the reward and dream modes, --outcome-head; lib/models/map_rnn.py)",
    )
    p.add_argument("--hidden", type=cli.positive_int, default=256, help="LSTM units (--arch lstm)")
    p.add_argument(
        "--map-channels",
        type=cli.positive_int,
        default=16,
        help="state channels per cell of the map (--arch map; h has channels x cells floats)",
    )
    p.add_argument(
        "--map-head-kernel",
        type=cli.positive_int,
        default=1,
        help="--arch map: the mixture head's view, 1 (each cell alone) or an odd k (a k x k "
        "convolution over the cells' [h, warped z], which can undo the blur the warp's "
        "interpolation leaves in the latents)",
    )
    p.add_argument(
        "--map-transport",
        action="store_true",
        help="--arch map: predict each cell's next latents from its 3 x 3 neighbours' "
        "warped latents, carried by weights the head predicts (a softmax over the nine), "
        "plus the mixture's offsets, so M can move a person across cells (beyond the "
        "paper; off: the offsets are added to the cell's own warped latents)",
    )
    p.add_argument(
        "--map-velocity",
        action="store_true",
        help="--arch map: a constant-velocity prior: each cell's last change (z_t against "
        "the warped z_{t-1}) joins the gates' input, and the mean's base moves on by a "
        "learnt share of it per latent, starting at 0 (beyond the paper)",
    )
    p.add_argument(
        "--map-outcome-hidden",
        type=cli.non_negative_int,
        default=0,
        help="--arch map: 0 reads how a step ends linearly from the flattened h map; N > 0 "
        "first runs a 3 x 3 convolution of N ReLU channels over the map, so a person near "
        "the robot is one feature wherever it is (beyond the paper)",
    )
    p.add_argument("--mixtures", type=cli.positive_int, default=5, help="Gaussians per latent dim")
    p.add_argument(
        "--residual",
        action="store_true",
        help="predict z(t+1) as z(t) plus a mixture of offsets (beyond the paper; learns much faster)",
    )
    p.add_argument(
        "--outcome-head",
        action="store_true",
        help="reward/dream modes: predict how each step ends (running, success, collision, "
        "out of map) and a bounded running-step reward instead of a free reward and a done "
        "logit, so a dream cannot pay more than the task (beyond the paper)",
    )
    p.add_argument(
        "--z-source",
        choices=rnn_data.Z_SOURCES,
        default="sample",
        help="the z M reads and predicts: sample, drawn from V's posterior anew every "
        "epoch (the paper); mean, V's posterior mean, the z the agent reads, so M's "
        "samples carry M's own uncertainty rather than V's encoding noise (beyond the "
        "paper; docs/experiments.md)",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument(
        "--keep",
        choices=("last", "best"),
        default="last",
        help="which epoch's M is rnn_<mode>.npz: last, the last epoch's (the paper); best, "
        "the epoch with the lowest held-out NLL on 02's test episodes (an early stop that "
        "goes on training: the log and the snapshot follow every epoch)",
    )
    p.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip")
    p.add_argument("--reward-weight", type=float, default=1.0, help="weight of the reward loss")
    p.add_argument("--done-weight", type=float, default=1.0, help="weight of the done loss")
    p.add_argument(
        "--done-pos-weight",
        type=float,
        default=None,
        help="weight of done=1 steps in the done loss, or of each ending with --outcome-head "
        "(default: #not-done / #done, at most 50, per ending with --outcome-head)",
    )
    p.add_argument(
        "--ss-max", type=float, default=0.5, help="final scheduled-sampling probability (dream)"
    )
    cli.add_temperature_arg(p, "scheduled samples (dream)")
    p.add_argument(
        "--open-loop",
        type=cli.non_negative_int,
        default=0,
        help="dream mode: 0 replaces single inputs by M's one-step predictions (scheduled "
        "sampling); K > 0 dreams whole blocks of K steps instead, each input M's own "
        "prediction from the one before, so M learns to come back from its own drift "
        "over K steps (beyond the paper; lib/models/mdn_rnn.py open_loop_inputs)",
    )
    p.add_argument(
        "--rollout-steps",
        type=cli.non_negative_int,
        default=0,
        help="--arch map: > 0 adds the rollout loss: from --rollout-starts real frames of "
        "every chunk, M dreams this many steps on its own predictions (tau 0) under the "
        "real actions, and the dreamt z's squared error and, with --outcome-head, the "
        "dreamt endings' cross-entropy join the loss, backpropagated through the whole "
        "dream (beyond the paper; lib/models/rollout_loss.py). 0: off",
    )
    p.add_argument(
        "--rollout-starts",
        type=cli.positive_int,
        default=4,
        help="dreams per sequence and chunk for the rollout loss",
    )
    p.add_argument(
        "--rollout-endings",
        type=cli.non_negative_float,
        default=0.0,
        help="0: the rollout loss's dreams start anywhere in the chunk. F in (0, 1]: they "
        "start inside the episode, and with probability F a sequence whose chunk holds its "
        "episode's ending (a collision, the goal, leaving the room) starts its dream within "
        "--rollout-steps of it, so the dream is trained on the states that end episodes "
        "(beyond the paper; lib/models/rollout_loss.py)",
    )
    p.add_argument(
        "--rollout-weight",
        type=cli.non_negative_float,
        default=1.0,
        help="weight of the rollout loss",
    )
    p.add_argument(
        "--rollout-end-weight",
        type=cli.non_negative_float,
        default=1.0,
        help="weight of the rollout loss's endings part against its z part (the rollout "
        "loss is z + this x endings): above 1 the dream's dynamics serve its forecast of "
        "how steps end (collisions above all) more than its picture; needs --outcome-head",
    )
    p.add_argument(
        "--task-weight",
        type=cli.non_negative_float,
        default=0.0,
        help="0: the paper's loss. > 0: M gains a linear head from [z, h] (C's input) to "
        "the action that 02's --labels teacher took at each step, and this weight times "
        "its squared error per step joins the loss, so h carries what a linear C needs "
        "(needs 02 --labels; see lib/models/task_head.py)",
    )
    p.add_argument(
        "--max-episodes",
        type=cli.positive_int,
        default=None,
        help="use at most this many training episodes",
    )
    p.add_argument(
        "--extra-episodes",
        nargs="+",
        metavar="DIR",
        default=[],
        help="also train on DIR/rnn_data/train of these 02 folders, e.g. the episodes of a "
        "trained C (02 --agent): the paper's iterative procedure. Held-out metrics stay on "
        "<data-dir>'s test split",
    )
    cli.add_gpu_arg(p, "M (and V, to encode its data)")
    cli.add_run_args(p, "data/models/rnn_<mode>_snapshot.npz")
    cli.add_common_args(p)
    args = p.parse_args(argv)
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if not 0 <= args.ss_max <= 1:
        p.error(f"--ss-max must be in [0, 1], got {args.ss_max}")
    if args.outcome_head and args.mode not in ("reward", "dream"):
        p.error(f"--outcome-head needs --mode reward or dream (M's heads), not {args.mode}")
    if args.arch == "map" and args.mode in ("reward", "dream") and not args.outcome_head:
        p.error(f"--arch map predicts endings with --outcome-head: add it (--mode {args.mode})")
    if args.open_loop and args.mode != "dream":
        p.error(f"--open-loop dreams blocks of inputs in --mode dream, not {args.mode}")
    if args.map_head_kernel % 2 == 0:
        p.error(f"--map-head-kernel must be odd, got {args.map_head_kernel}")
    if args.map_outcome_hidden and not (args.arch == "map" and args.outcome_head):
        p.error(
            "--map-outcome-hidden shapes the map M's outcome head: add --arch map --outcome-head"
        )
    if args.map_transport and args.arch != "map":
        p.error("--map-transport needs --arch map (it moves latents across the map's cells)")
    if args.map_velocity and args.arch != "map":
        p.error("--map-velocity needs --arch map (it carries each cell's last change)")
    if args.rollout_steps and args.arch != "map":
        p.error("--rollout-steps needs --arch map (the dense M has no differentiable rollout)")
    if args.rollout_endings > 1:
        p.error(f"--rollout-endings must be in [0, 1], got {args.rollout_endings}")
    if args.rollout_endings and not args.rollout_steps:
        p.error("--rollout-endings places the rollout loss's dreams: add --rollout-steps")
    if args.rollout_end_weight != 1.0 and not (args.rollout_steps and args.outcome_head):
        p.error("--rollout-end-weight weighs the rollout loss's endings: add --rollout-steps "
                "and --outcome-head")  # fmt: skip
    if args.arch == "map" and args.task_weight:
        p.error("--task-weight needs --arch lstm (the map M has no task head)")
    cli.check_run_args(p, args)
    return args


def batches_for_epoch(mode, data, z, args, rng):
    """The epoch's batches, each a list of chunks (one chunk unless BPTT cuts it)."""
    if mode == "window":
        return [
            [rnn_data.window_batch(data, z, w, args.window)]
            for w in rnn_data.window_plan(data, args.window, args.batch_size, rng)
        ]
    return [
        rnn_data.chunks(rnn_data.episode_batch(data, z, eps), args.seq_len)
        for eps in rnn_data.episode_plan(len(data), args.batch_size, rng)
    ]


def batches_per_epoch(mode, data, args):
    """How many batches `batches_for_epoch` makes (the same every epoch)."""
    if mode == "window":
        return max(1, math.ceil(int(data.lengths.sum()) / (args.batch_size * args.window)))
    return math.ceil(len(data) / args.batch_size)


def open_loop_drawer(test, root):
    """A function (model, vae) -> M's open loop on the first held-out episode, as 06
    draws it (lib/diagnostics/open_loop_strip.py), for TensorBoard after every epoch;
    the episode's frames are read once, here. None without a test split."""
    if test is None:
        return None
    ep = test.episode(0)
    frames = load_episode(os.path.join(root, "test", test.files[0]), image_size=None)["obs"]

    def draw(model, vae):
        rng = np.random.default_rng(0)  # unused at temperature 0; apart from training's
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            picture, _, _ = open_loop_picture(
                model, vae, ep["mu"], ep["action"], frames, 5, 12, rng
            )
        return picture

    return draw


def evaluate(model, data, z, batch_size, seq_len, done_pos_weight=1.0):
    """Held-out NLL per latent dim, reward MSE and done accuracy / recall, and with a
    task head (and labelled data) its loss per step and R² (1 - its squared error
    over the targets' total sum of squares about their mean)."""
    task = bool(model.task_size) and data.teacher is not None
    residual, targets = 0.0, []
    sums = {
        "nll": 0.0,
        "steps": 0.0,
        "reward_se": 0.0,
        "done_right": 0.0,
        "pos": 0.0,
        "pos_hit": 0.0,
    }
    xp = model.xp
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        for eps in rnn_data.episode_plan(len(data), batch_size, np.random.default_rng(0)):
            state = None
            for ch in rnn_data.chunks(rnn_data.episode_batch(data, z, np.sort(eps)), seq_len):
                out = model(xp.asarray(ch["z"]), xp.asarray(ch["a"]), state)
                h0 = None if state is None else state[0]
                state = (out.state[0].array, out.state[1].array)
                b, t = ch["mask"].shape
                mask = ch["mask"].reshape(-1)
                n = float(mask.sum())  # a Python float: NumPy 2 keeps float32 scalars float32
                raw = out.mixture.array.reshape(b * t, -1)
                nll = mdn_nll(
                    raw,
                    xp.asarray(ch["z_next"].reshape(b * t, -1)),
                    xp.asarray(mask),
                    model.z_size,
                    model.n_mixtures,
                    model.log_sigma_min,
                    model.log_sigma_max,
                )
                sums["nll"] += float(nll.array) * n
                sums["steps"] += n
                if task:
                    pred = devices.to_host(model.task_prediction(ch["z"], out.h, h0).array)
                    target, labelled = task_targets(ch["teacher"].reshape(b * t, -1))
                    labelled = labelled * mask[:, None]
                    residual += float(((pred - target) ** 2 * labelled).sum())
                    targets.append((target, labelled))
                if model.can_dream:
                    pred = devices.to_host(out.reward).reshape(-1)
                    sums["reward_se"] += float(
                        (((pred - ch["reward"].reshape(-1)) ** 2) * mask).sum()
                    )
                    logit = devices.to_host(out.done_logit).reshape(-1)
                    done = ch["done"].reshape(-1) > 0.5
                    guess = calibrated_done_logit(logit, done_pos_weight) > done_logit_threshold()
                    sums["done_right"] += float(((guess == done) * mask).sum())
                    sums["pos"] += float((done * mask).sum())
                    sums["pos_hit"] += float((done & guess).sum())
    n = max(sums["steps"], 1.0)
    out = {"test_nll": sums["nll"] / n}
    if model.can_dream:
        out["test_reward_mse"] = sums["reward_se"] / n
        out["test_done_accuracy"] = sums["done_right"] / n
        out["test_done_recall"] = sums["pos_hit"] / max(sums["pos"], 1.0)
    if task:
        out["test_task_loss"] = residual / n
        out["test_task_r2"] = task_r2(residual, *map(np.concatenate, zip(*targets)))
    return out


def load_latents(split_dir, vae, vae_path, limit):
    """V's encoding of a split's episodes (`latents.encode_split`, cached), with a bar."""
    desc = f"encoding {os.path.basename(split_dir)} with V"
    with progress.callback(desc, "ep") as show:
        return latents.encode_split(split_dir, vae, vae_path, limit, show)


def check_frame_size(root, v_size):
    """Fails unless 02's frames (its manifest says their size) are the size V expects."""
    data_manifest = manifest.read_json(os.path.join(root, "manifest.json")) or {}
    frame_size = data_manifest.get("identity", {}).get("env", {}).get("image_size", v_size)
    if frame_size != v_size:
        cli.fail(
            f"{root} has {frame_size}x{frame_size} frames but V expects {v_size} — retrain V or regenerate 02's data"
        )


def load_episodes(root, vae, vae_path, max_episodes, extra_dirs=()):
    """The train split's latent episodes (with those of --extra-episodes' folders after
    them) and the test split's (None without one); prints what they hold."""
    try:
        train, info = load_latents(os.path.join(root, "train"), vae, vae_path, max_episodes)
        parts = [train]
        for d in extra_dirs:
            extra_root = os.path.join(d, "rnn_data")
            if not os.path.isdir(os.path.join(extra_root, "train")):
                cli.fail(f"--extra-episodes {d}: {extra_root}/train not found — run 02 there")
            check_frame_size(extra_root, vae.image_size)
            parts.append(load_latents(os.path.join(extra_root, "train"), vae, vae_path, None)[0])
            print(f"  + {len(parts[-1])} episodes from {extra_root}/train")
        train = latents.concatenate(parts)
    except latents.NoEpisodesError as e:
        cli.fail(f"{e} — run 02_generate_rnn_data.py first")
    test = None
    if os.path.isdir(os.path.join(root, "test")):
        try:
            test, _ = load_latents(os.path.join(root, "test"), vae, vae_path, None)
        except latents.NoEpisodesError:
            test = None
    note = " (cache rebuilt)" if info["rebuilt"] else " (cached)"
    skipped = len(info["skipped"])
    train_text = f"{len(train)} episodes, {int(train.lengths.sum())} steps{note}"
    bad = f", {skipped} bad files skipped" if skipped else ""
    test_text = f"{len(test)} episodes" if test else None
    print(training.data_line(train_text + bad, test_text, "no held-out metrics"))
    return train, test


def held_out_baselines(train, test, seed, source):
    """The test split's z (`source`: sampled once, or the means) and the NLL of the
    constant-z and copy-z baselines on it; (None, None) without a test split."""
    if test is None:
        return None, None
    rng = np.random.default_rng(derive_seed(seed, "rnn/test-z"))
    z_test = rnn_data.latents_for(test, source, rng)
    z_train = rnn_data.latents_for(train, source, rng)
    baselines = rnn_data.baseline_nll(train, z_train, test, z_test)
    print(
        f"held-out baselines (NLL per latent dim): constant z {baselines['constant_z']:.3f}, copy z {baselines['copy_z']:.3f}"
    )
    return z_test, baselines


def done_pos_weight(train, heads, wanted):
    """The done loss's weight of done=1 steps: --done-pos-weight, or #not-done / #done
    (at most MAX_DONE_POS_WEIGHT); 1 without the heads."""
    if not heads:
        return 1.0
    dones = float(train.done.sum())
    return wanted or min((len(train.done) - dones) / max(dones, 1.0), MAX_DONE_POS_WEIGHT)


def outcome_settings(train, wanted):
    """The outcome head's `outcome_weights` (each ending's: --done-pos-weight, or
    #running / #that ending, at most MAX_DONE_POS_WEIGHT) and `shaping_bound`."""
    classes = np.where(train.outcome == sn.TIMEOUT, sn.RUNNING, train.outcome)
    counts = np.bincount(classes, minlength=len(OUTCOME_CLASSES)).astype(np.float64)
    weights = [1.0] + [
        wanted or (min(counts[0] / c, MAX_DONE_POS_WEIGHT) if c else 1.0) for c in counts[1:]
    ]
    running = train.reward[train.outcome == sn.RUNNING]
    largest = float(-running.min()) if len(running) and running.min() < 0 else 0.0
    return {"outcome_weights": weights, "shaping_bound": SHAPING_MARGIN * largest or 0.02}


def model_config(args, vae, vae_sidecar, action_size, scalar_heads):
    """M's constructor arguments (before the outcome head's): the dense MDN-LSTM's, or
    with --arch map the map M's, its grid read from V (fails unless V is spatial)."""
    z_size = vae_sidecar["config"]["z_size"]
    if args.arch == "map":
        view = saved_models.observation_settings(vae_sidecar)["view_size"]
        offsets = vae.map_offsets(view)
        if offsets is None:
            cli.fail(
                "--arch map needs a spatial V (03_train_vae.py --spatial K); this V's z is flat"
            )
        return {
            "arch": "map", "z_size": z_size, "side": len(offsets), "offsets": offsets.tolist(),
            "action_size": action_size, "channels": args.map_channels, "n_mixtures": args.mixtures,
            "head_kernel": args.map_head_kernel, "transport": args.map_transport,
            "velocity": args.map_velocity,
            "outcome_hidden": args.map_outcome_hidden,
        }  # fmt: skip
    config = {
        "z_size": z_size,
        "action_size": action_size,
        "hidden_size": args.hidden,
        "n_mixtures": args.mixtures,
        "reward_head": scalar_heads,
        "done_head": scalar_heads,
        "residual": args.residual,
    }
    if args.task_weight:
        config["task_size"] = action_size
    return config


def resume(run, config):
    """Restores `run` from its snapshot after checking it holds an M of these sizes."""
    old = run.saved_settings()
    # a key that a newer 04 added is absent from an older snapshot: it was the default then
    defaults = constructor_defaults(config)
    old_config = {k: old.get("config", {}).get(k, defaults.get(k)) for k in config}
    if old.get("config") is not None and old_config != config:
        cli.fail(
            f"{run.path} is an M with {old_config}, not {config} — V's z size or the "
            "flags changed; use the same V and flags, or --overwrite"
        )
    try:
        run.restore()
    except ValueError as e:
        cli.fail(str(e))
    print(f"resumed from {run.path}: epoch {run.epoch + 1}, batch {run.iteration}")


def kept_epoch(keep: str, logged: list[dict], row: dict) -> int:
    """The epoch whose M is the saved one once `row`'s epoch ends: that epoch with
    --keep last; with --keep best, the epoch of the lowest held-out NLL among the
    logged rows (as the CSV rounds them) and `row` (the earlier one on a tie)."""
    if keep == "last":
        return row["epoch"]
    scores = [(float(r["test_nll"]), int(r["epoch"])) for r in logged if r.get("test_nll")]
    scores.append((float(f"{row['test_nll']:.6g}"), row["epoch"]))
    return min(scores)[1]


def epoch_line(row, baselines, heads, seconds):
    """The line printed after an epoch."""
    text = f"epoch {row['epoch']}: train NLL {row['train_nll']:.3f}"
    if baselines is not None:
        text += f", held-out {row['test_nll']:.3f} (constant z {baselines['constant_z']:.3f}, copy z {baselines['copy_z']:.3f})"
        if heads:
            text += f", reward MSE {row['test_reward_mse']:.4f}, done accuracy {row['test_done_accuracy']:.3f} recall {row['test_done_recall']:.2f}"
    if "test_task_r2" in row:
        text += f", task head R² {row['test_task_r2']:.3f}"
    elif "train_task_loss" in row:
        text += f", task loss {row['train_task_loss']:.3f}"
    return text + f", {seconds:.1f} s"


def headline(args, heads):
    """The run's first line: which M, its size, and the training's settings."""
    size = f"{args.map_channels} channels a cell" if args.arch == "map" else f"hidden {args.hidden}"
    return (
        f"04: M ({args.arch}) in mode {args.mode} (reward/done heads: {heads}), {size}, "
        f"{args.mixtures} mixtures, batch {args.batch_size}, lr {args.lr}, {args.epochs} "
        f"epochs, seed {args.seed}"
    )


def loss_keys(args, heads):
    """The losses an epoch averages and logs (`train_<key>` columns)."""
    keys = ["loss", "nll"] + (["reward_loss", "done_loss"] if heads else [])
    keys += ["task_loss"] if args.task_weight else []
    if args.rollout_steps:
        keys += ["rollout_loss", "rollout_z_loss"]
        keys += ["rollout_end_loss"] if args.outcome_head else []
    return keys


def train_chunk(model, loss_fn, optimizer, reporter, ch, state, ss_prob, rng, args, run):
    """One update on one chunk of a batch's sequences (truncated backpropagation through
    time): M's inputs (the real z, or with scheduled sampling / --open-loop some of its
    own), the one-step loss, with --rollout-steps the rollout loss, the NaN guard, and
    Adam's step. Returns what the loss reported and the LSTM state to carry on from."""
    xp = model.xp
    heads = args.mode in ("reward", "dream")
    if args.open_loop:
        z_in = model.open_loop_inputs(
            ch["z"], ch["a"], ss_prob, args.open_loop, args.temperature, rng, state
        )
    else:
        z_in = model.scheduled_inputs(ch["z"], ch["a"], ss_prob, args.temperature, rng, state)
    obs = {}
    state_in = state
    with reporter.scope(obs):
        loss, state = loss_fn(
            xp.asarray(z_in), xp.asarray(ch["a"]), xp.asarray(ch["z_next"]), xp.asarray(ch["mask"]),
            xp.asarray(ch["reward"]) if heads else None, xp.asarray(ch["done"]) if heads else None, state,
            xp.asarray(ch["outcome"]) if args.outcome_head else None,
            ch["teacher"] if args.task_weight else None, ch["z"],
        )  # fmt: skip
        if args.rollout_steps:
            z_loss, end_loss = rollout_loss(
                model, loss_fn.last_output, ch["z"], ch["a"], ch["z_next"], ch["mask"],
                ch["outcome"] if args.outcome_head else None, state_in,
                args.rollout_steps, args.rollout_starts, rng, args.rollout_endings,
            )  # fmt: skip
            parts = {"rollout_z_loss": z_loss}
            extra = z_loss
            if end_loss is not None:
                parts["rollout_end_loss"] = end_loss
                extra = extra + args.rollout_end_weight * end_loss
            loss = loss + args.rollout_weight * extra
            chainer.reporter.report({"rollout_loss": extra, **parts}, loss_fn)
    run.check_loss(float(loss.array), "the M loss")
    model.cleargrads()
    loss.backward()
    optimizer.update()
    return obs, (state[0].array, state[1].array)  # truncate BPTT here


def main(argv=None):
    args = parse_args(argv)
    heads = args.mode in ("reward", "dream")
    scalar_heads = heads and not args.outcome_head
    root = os.path.join(args.data_dir, "rnn_data")
    models = os.path.join(args.data_dir, "models")
    name = f"rnn_{args.mode}"
    model_path = os.path.join(models, f"{name}.npz")
    vae_path = os.path.join(models, "vae.npz")
    print(headline(args, heads))

    # CHECKS: V exists and fits the data; nothing is written before this passes.
    try:
        device = devices.select_device(args.gpu)
        vae, vae_sidecar = saved_models.load_vae(args.data_dir)
    except (devices.DeviceUnavailable, saved_models.CheckpointError) as e:
        cli.fail(str(e))
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        cli.fail(f"{train_dir} not found — run 02_generate_rnn_data.py first")
    check_frame_size(root, vae_sidecar["config"]["image_size"])
    try:
        run = Checkpointer.from_args(os.path.join(models, f"{name}_snapshot.npz"), args)
    except training.RunConflict as e:
        cli.fail(str(e))
    cli.ensure_writable_dir(models)

    # INPUTS: V's encoding of every frame, cached by content hash.
    train, test = load_episodes(root, vae, vae_path, args.max_episodes, args.extra_episodes)
    if args.task_weight and train.teacher is None:
        cli.fail(
            f"--task-weight needs labelled episodes, and {train_dir} has none — "
            "regenerate them with 02_generate_rnn_data.py --labels oracle (and --overwrite)"
        )
    if args.keep == "best" and test is None:
        cli.fail(
            f"--keep best chooses by the held-out NLL, and {root}/test has no episodes — "
            "run 02_generate_rnn_data.py with --testepisodes > 0, or use --keep last"
        )
    pos_weight = done_pos_weight(train, scalar_heads, args.done_pos_weight)
    z_test, baselines = held_out_baselines(train, test, args.seed, args.z_source)

    # MODEL AND OPTIMIZER
    np.random.seed(derive_seed(args.seed, "rnn/init") % 2**32)  # Chainer's initializers
    config = model_config(args, vae, vae_sidecar, int(train.action.shape[1]), scalar_heads)
    if args.outcome_head:
        config.update(outcome_head=True, **outcome_settings(train, args.done_pos_weight))
    model = build_rnn(config)
    model.to_device(device)
    loss_fn = MDNRNNLoss(model, args.reward_weight, args.done_weight, pos_weight, args.task_weight)
    optimizer = FastAdam(alpha=args.lr)
    optimizer.setup(model)
    if args.grad_clip > 0:
        optimizer.add_hook(chainer.optimizer_hooks.GradientClipping(args.grad_clip))
    v_sha1 = file_hash(vae_path)
    vae_info = {"path": vae_path, "sha1": v_sha1, "config": vae_sidecar["config"]}
    settings = {"config": model.config(), "mode": args.mode, "vae": vae_info}
    settings["z_source"] = args.z_source
    settings.update(done_pos_weight=pos_weight, baselines=baselines, args=vars(args))
    run.track(model, optimizer, settings=settings)
    if args.resume:
        resume(run, config)
    log_path = os.path.join(models, f"{name}_log.csv")
    n_batches = batches_per_epoch(args.mode, train, args)
    events = run.event_log(tensorboard_log.run_dir(args.data_dir, name), n_batches)
    draw_open_loop = open_loop_drawer(test, root)
    log = training.CsvLog(log_path, LOG_FIELDS, run.epoch if args.resume else None, events)

    # TRAINING LOOP
    reporter = chainer.Reporter()
    reporter.add_observer("m", loss_fn)
    keys = loss_keys(args, heads)
    if run.epoch >= args.epochs:
        print(f"already trained for {run.epoch} epochs (--epochs {args.epochs}): nothing to do")
    with run.ending(events), run:
        for epoch in run.epochs(args.epochs):
            # All of an epoch's randomness comes from (seed, epoch) and (seed, epoch,
            # batch), so a resumed run repeats it exactly.
            epoch_rng = np.random.default_rng(derive_seed(args.seed, "rnn/epoch", epoch))
            z = rnn_data.latents_for(train, args.z_source, epoch_rng)
            plan = batches_for_epoch(args.mode, train, z, args, epoch_rng)
            ss_prob = args.ss_max * epoch / max(args.epochs - 1, 1) if args.mode == "dream" else 0.0
            means = training.EpochMeans(keys, run.partial)
            start = time.perf_counter()
            with run.batches(len(plan), f"epoch {epoch + 1}/{args.epochs}") as bar:
                for it in bar:
                    rng = np.random.default_rng(derive_seed(args.seed, "rnn/batch", epoch, it))
                    state = None
                    for ch in plan[it]:
                        obs, state = train_chunk(
                            model, loss_fn, optimizer, reporter, ch, state, ss_prob, rng, args, run
                        )  # fmt: skip
                        means.add(obs, float(ch["mask"].sum()), prefix="m/")
                    bar.set_postfix(nll=f"{means.mean('nll'):.3f}")
                    events.batch(means.since_last(), epoch * n_batches + it + 1)
                    run.batch_done(means.state())
            seconds = time.perf_counter() - start
            row = {"epoch": epoch + 1, "ss_prob": round(ss_prob, 4)}
            row.update(seconds=round(seconds, 2), **means.means(prefix="train_"))
            if test is not None:
                held = evaluate(model, test, z_test, args.batch_size, args.seq_len, pos_weight)
                row.update(held, constant_z_nll=baselines["constant_z"])
                row["copy_z_nll"] = baselines["copy_z"]
                events.image("open_loop", draw_open_loop(model, vae), epoch + 1)
            kept = kept_epoch(args.keep, log.read(), row)
            log.append(row)
            title = f"M ({args.mode}): NLL of z(t+1) per latent dimension"
            training.plot_curves(log, f"{models}/{name}_loss.png", CURVES, title, "nats")
            line = epoch_line(row, baselines, heads, seconds)
            if kept == epoch + 1:
                training.save_model(model_path, model, run.sidecar(epochs=epoch + 1, last=row))
            else:
                line += f"; {name}.npz stays at epoch {kept} (--keep best)"
            print(line)

    # OUTPUTS
    print(
        f"model: {model_path} (+ {name}.json); log and curves: {models}/{name}_log.csv, {name}_loss.png"
    )


if __name__ == "__main__":
    main()
