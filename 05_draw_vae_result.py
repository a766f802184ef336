"""Draws what V learned: reconstructions, samples from the prior, latent traversals.

Reads:
    data/models/vae.npz (+ vae.json): the VAE from 03_train_vae.py.
    data/vae_data/test/*.npz: held-out rollouts, `obs` (T+1, 64, 64, 3) uint8.
Writes (data/results/):
    vae_reconstructions.png: held-out frames (odd rows) over the decoding of
        their posterior mean (even rows).
    vae_samples.png: frames decoded from z ~ N(0, I).
    vae_traversal.png: one row per latent dimension with the highest mean KL;
        each sweeps that dimension from -2 to +2 standard deviations (of its
        posterior means over the held-out frames) around the average code.
    vae_summary.json: held-out reconstruction error and per-dimension KL.
"""

import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import json
import os

import numpy as np

from lib import cli, devices, drawing
from lib.env.rollouts import BadRolloutError, list_rollouts, load_episode
from lib.models import saved_models
from lib.models.vae import decode_latents, encode_frames


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_common_args(p)
    p.add_argument("--frames", type=cli.positive_int, default=12, help="frames per row")
    p.add_argument(
        "--rows", type=cli.positive_int, default=3, help="pairs of rows of reconstructions"
    )
    p.add_argument("--dims", type=cli.positive_int, default=6, help="latent dimensions to traverse")
    cli.add_gpu_arg(p, "V")
    p.add_argument("--split", choices=("test", "train"), default="test", help="frames to draw from")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    split_dir = os.path.join(args.data_dir, "vae_data", args.split)
    out_dir = os.path.join(args.data_dir, "results")
    print(f"05: drawing the VAE in {args.data_dir}/models on {split_dir} -> {out_dir}")

    # INPUTS
    try:
        device = devices.select_device(args.gpu)
        vae, sidecar = saved_models.load_vae(args.data_dir, device)
    except (devices.DeviceUnavailable, saved_models.CheckpointError) as e:
        cli.fail(str(e))
    files = list_rollouts(split_dir)
    if not files:
        cli.fail(f"no rollouts in {split_dir} — run 01_generate_vae_data.py first")
    size = sidecar["config"]["image_size"]
    episodes, bad = [], 0
    for path in files[:50]:
        try:
            episodes.append(load_episode(path, image_size=size)["obs"])
        except BadRolloutError:
            bad += 1
    if not episodes:
        cli.fail(f"no readable {size}x{size} rollouts in {split_dir} ({bad} bad files)")
    frames = np.concatenate(episodes)
    rng = np.random.default_rng(args.seed)
    cli.ensure_writable_dir(out_dir)

    # RECONSTRUCTIONS
    n = args.frames * args.rows
    picks = np.sort(rng.choice(len(frames), size=min(n, len(frames)), replace=False))
    shown = frames[picks]
    mu, _ = encode_frames(vae, shown)
    recon = decode_latents(vae, mu)
    rows = []
    for r in range(0, len(shown), args.frames):
        rows += [list(shown[r : r + args.frames]), list(recon[r : r + args.frames])]
    drawing.save_png(
        os.path.join(out_dir, "vae_reconstructions.png"),
        drawing.caption(
            drawing.upscale(drawing.grid(rows), 3),
            "held-out frames (rows 1, 3, 5) over V's reconstructions of their mean z (rows 2, 4, 6)",
        ),
    )

    # SAMPLES FROM THE PRIOR
    z_size = sidecar["config"]["z_size"]
    z = rng.standard_normal((n, z_size)).astype(np.float32)
    samples = decode_latents(vae, z)
    drawing.save_png(
        os.path.join(out_dir, "vae_samples.png"),
        drawing.caption(
            drawing.upscale(
                drawing.grid(
                    [list(samples[r : r + args.frames]) for r in range(0, n, args.frames)]
                ),
                3,
            ),
            "frames decoded from z ~ N(0, I)",
        ),
    )

    # LATENT TRAVERSAL (dims with the most information about the frames)
    all_mu, all_logvar = encode_frames(vae, frames[: min(len(frames), 4000)])
    kl = 0.5 * (all_mu**2 + np.exp(all_logvar) - 1.0 - all_logvar).mean(axis=0)
    dims = np.argsort(kl)[::-1][: args.dims]
    centre = all_mu.mean(axis=0)
    spread = all_mu.std(axis=0)
    steps = np.linspace(-2.0, 2.0, 9)
    rows = []
    for d in dims:
        where = ""
        if vae.spatial:
            row, column, k = vae.latent_cell(d)
            where = f" = cell (row {row}, column {column}) of the encoder's map, latent {k}"
        zs = np.repeat(centre[None], len(steps), axis=0)
        zs[:, d] = centre[d] + steps * spread[d]
        rows.append(
            drawing.caption(
                drawing.upscale(drawing.grid([list(decode_latents(vae, zs))]), 3),
                f"z[{d}]{where} (mean KL {kl[d]:.2f} nats): -2 sd ... +2 sd",
            )
        )
    drawing.save_png(os.path.join(out_dir, "vae_traversal.png"), np.concatenate(rows, axis=0))

    # SUMMARY
    rec = decode_latents(vae, all_mu[:1000]).astype(np.float32) / 255.0
    target = frames[: len(rec)].astype(np.float32) / 255.0
    summary = {
        "frames": len(rec),
        "reconstruction_sse_per_frame": float(((rec - target) ** 2).sum(axis=(1, 2, 3)).mean()),
        "kl_per_dim": [float(v) for v in kl],
        "active_dims": int((kl > 0.1).sum()),
        "bad_files": bad,
    }
    with open(os.path.join(out_dir, "vae_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(
        f"held-out reconstruction error {summary['reconstruction_sse_per_frame']:.1f} per frame "
        f"(sum of squares over 64x64x3 in [0,1]); {summary['active_dims']} of {z_size} latent dims carry > 0.1 nats"
    )
    print(
        f"wrote {out_dir}/vae_reconstructions.png, vae_samples.png, vae_traversal.png, vae_summary.json"
    )


if __name__ == "__main__":
    main()
