"""Draws what M learned: one-step predictions, open-loop predictions and a dream.

Reads:
    data/models/vae.npz (+ json) and data/models/rnn_<mode>.npz (+ json).
    data/rnn_data/test/*.npz: held-out episodes (encoded by V through the
        latent cache of lib/data/latents.py).
Writes (data/results/):
    rnn_<mode>_onestep.png: a test episode's real frames (top row) over V's
        decoding of M's prediction of each frame from the steps before it
        (teacher-forced; the mean of the most likely mixture component).
    rnn_<mode>_openloop.png: from a real start after --warmup steps, M predicts
        --steps frames ahead on its own samples, given the real actions (top:
        real, bottom: M).
    rnn_<mode>_dream.gif: M dreams from a real first frame under a smooth random
        policy, decoded by V; with reward/done heads each frame shows the
        predicted reward and probability of the episode ending.
    mover_openloop.png: with a pixel mover (data/models/mover.npz, 04b), its dream from
        the same start: real frames, the mover's frames, and V's decoding of their z.
    rnn_<mode>_summary.json: one-step and open-loop latent errors (and the mover's).
"""

import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import json
import os

import numpy as np

from lib import cli, devices, drawing
from lib.data import latents
from lib.diagnostics.open_loop_strip import mover_picture, open_loop_picture, strip
from lib.env.rollouts import load_episode
from lib.models import saved_models
from lib.models.mdn_rnn import DONE_THRESHOLD, MODES, calibrated_done_logit, sample
from lib.models.vae import decode_latents


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=MODES, default="window", help="which M (rnn_<mode>.npz)")
    p.add_argument("--episode", type=cli.non_negative_int, default=0, help="test episode to draw")
    p.add_argument("--frames", type=cli.positive_int, default=12, help="frames per strip")
    p.add_argument(
        "--warmup", type=cli.non_negative_int, default=5, help="real steps before open loop"
    )
    p.add_argument("--steps", type=cli.positive_int, default=12, help="open-loop steps")
    p.add_argument("--dream-steps", type=cli.positive_int, default=100, help="longest dream")
    cli.add_temperature_arg(p)
    cli.add_gpu_arg(p)
    cli.add_common_args(p)
    args = p.parse_args(argv)
    return args


def main(argv=None):
    args = parse_args(argv)
    out_dir = os.path.join(args.data_dir, "results")
    name = f"rnn_{args.mode}"
    print(f"06: drawing M ({args.mode}) in {args.data_dir}/models -> {out_dir}")

    # INPUTS
    try:
        device = devices.select_device(args.gpu)
        vae, vae_sidecar = saved_models.load_vae(args.data_dir, device)
        model, rnn_sidecar = saved_models.load_rnn(
            args.data_dir, args.mode, vae_sidecar["config"]["z_size"], device
        )
        mover = saved_models.load_mover(args.data_dir)  # None without 04b's mover
    except (devices.DeviceUnavailable, saved_models.CheckpointError) as e:
        cli.fail(str(e))
    test_dir = os.path.join(args.data_dir, "rnn_data", "test")
    try:
        data, _ = latents.encode_split(
            test_dir, vae, os.path.join(args.data_dir, "models", "vae.npz")
        )
    except latents.NoEpisodesError as e:
        cli.fail(f"{e} — run 02_generate_rnn_data.py first")
    if args.episode >= len(data):
        cli.fail(f"--episode {args.episode}: the test split has {len(data)} episodes")
    ep = data.episode(args.episode)
    real = load_episode(os.path.join(test_dir, data.files[args.episode]), image_size=None)["obs"]
    cli.ensure_writable_dir(out_dir)
    rng = np.random.default_rng(args.seed)
    t_len = len(ep["action"])

    # ONE-STEP PREDICTIONS (teacher-forced). M runs on its device; each step's
    # prediction comes back to the host (`to_host`) for drawing and scoring.
    state, pred = None, [ep["mu"][0]]
    for t in range(t_len):
        out = model.step(ep["mu"][t][None], ep["action"][t][None], state)
        state = out.state
        pred.append(devices.to_host(sample(out.mixture, 0.0, rng))[0])
    pred = np.array(pred)
    picks = np.unique(np.linspace(1, t_len, min(args.frames, t_len)).round().astype(int))
    decoded = decode_latents(vae, pred[picks])
    drawing.save_png(
        os.path.join(out_dir, f"{name}_onestep.png"),
        strip(
            real[picks],
            decoded,
            f"episode {data.files[args.episode]}: real frames (top), V(M's one-step prediction) (bottom), steps {list(picks)}",
        ),
    )
    onestep_err = float(((pred[1:] - ep["mu"][1:]) ** 2).sum(axis=1).mean())

    # OPEN LOOP: M feeds on its own samples after a real warm-up.
    picture, opened, real_idx = open_loop_picture(
        model, vae, ep["mu"], ep["action"], real, args.warmup, args.steps, rng
    )
    drawing.save_png(os.path.join(out_dir, f"{name}_openloop.png"), picture)
    horizon = len(opened)
    openloop_err = float(((opened - ep["mu"][real_idx]) ** 2).sum(axis=1).mean())
    mover_err = None
    if mover is not None:  # the pixel mover's dream from the same start (on the CPU)
        picture, moved, _ = mover_picture(
            mover, vae, ep["mu"], ep["action"], real, args.warmup, args.steps
        )
        drawing.save_png(os.path.join(out_dir, "mover_openloop.png"), picture)
        mover_err = float(((moved - ep["mu"][real_idx]) ** 2).sum(axis=1).mean())

    # DREAM: a smooth random policy inside M, from the episode's first frame.
    z = ep["mu"][0][None]
    state = None
    action = np.array([[0.5, 0.0]], np.float32)
    frames = [drawing.caption(drawing.upscale(real[0], 4), "t=0 real start")]
    for t in range(args.dream_steps):
        action = np.clip(action + rng.normal(0, 0.2, (1, 2)), -1, 1).astype(np.float32)
        out = model.step(z, action, state)
        state = out.state
        z = devices.to_host(sample(out.mixture, args.temperature, rng))
        image = drawing.upscale(decode_latents(vae, z)[0], 4)
        text = f"t={t + 1} dream, tau {args.temperature}"
        if out.reward is not None:
            logit = calibrated_done_logit(
                float(devices.to_host(out.done_logit)[0]), saved_models.done_pos_weight(rnn_sidecar)
            )
            p_done = float(1.0 / (1.0 + np.exp(-logit)))
            text = f"t={t + 1} r={float(devices.to_host(out.reward)[0]):+.3f} p(done)={p_done:.2f}"
            frames.append(drawing.caption(image, text))
            if p_done > DONE_THRESHOLD:
                break
        else:
            frames.append(drawing.caption(image, text))
    drawing.save_gif(os.path.join(out_dir, f"{name}_dream.gif"), frames, fps=8)

    summary = {
        "episode": data.files[args.episode],
        "onestep_sq_error": onestep_err,
        "openloop_sq_error": openloop_err,
        "mover_openloop_sq_error": mover_err,
        "dream_steps": len(frames) - 1,
    }
    with open(os.path.join(out_dir, f"{name}_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(
        f"one-step latent error {onestep_err:.2f}, open-loop ({horizon} steps) {openloop_err:.2f}; dream of {len(frames) - 1} steps"
    )
    if mover_err is not None:
        print(f"the pixel mover's open loop ({horizon} steps): latent error {mover_err:.2f}")
    print(
        f"wrote {out_dir}/{name}_onestep.png, {name}_openloop.png, {name}_dream.gif, {name}_summary.json"
        + (", mover_openloop.png" if mover_err is not None else "")
    )


if __name__ == "__main__":
    main()
