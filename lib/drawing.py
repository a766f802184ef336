"""Images for people: grids of frames, labels, PNGs and GIFs.

Every step of the pipeline leaves pictures behind (rollout previews, VAE
reconstructions, dreams, agent runs); they are all made here so they share one
look: frames on a white background, nearest-neighbour upscaling so pixels stay
visible, a short caption above each row when given.
"""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lib.fileio import atomic_path

PAD = 2  # px between frames, before upscaling


def grid(rows: list[list[np.ndarray]], pad: int = PAD, background: int = 255) -> np.ndarray:
    """Tiles frames into one image.

    Args:
        rows: rows of (H, W, 3) uint8 frames; all frames the same size, short
            rows are padded with background.

    Returns:
        (rows*(H+pad)+pad, cols*(W+pad)+pad, 3) uint8.
    """
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad, 3), background, np.uint8)
    for i, row in enumerate(rows):
        for j, frame in enumerate(row):
            y = pad + i * (h + pad)
            x = pad + j * (w + pad)
            out[y : y + h, x : x + w] = frame
    return out


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an (H, W, 3) uint8 image."""
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def caption(image: np.ndarray, text: str, height: int = 14) -> np.ndarray:
    """Adds a white band with `text` above an (H, W, 3) uint8 image."""
    band = Image.new("RGB", (image.shape[1], height), (255, 255, 255))
    ImageDraw.Draw(band).text((3, 1), text, fill=(0, 0, 0), font=ImageFont.load_default())
    return np.concatenate([np.asarray(band), image], axis=0)


def side_by_side(images: list[np.ndarray], pad: int = 4) -> np.ndarray:
    """Places images of possibly different sizes left to right, top-aligned."""
    h = max(im.shape[0] for im in images)
    w = sum(im.shape[1] for im in images) + pad * (len(images) - 1)
    out = np.full((h, w, 3), 255, np.uint8)
    x = 0
    for im in images:
        out[: im.shape[0], x : x + im.shape[1]] = im
        x += im.shape[1] + pad
    return out


def save_png(path: str, image: np.ndarray) -> None:
    """Writes an (H, W, 3) uint8 image as PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")


def save_gif(path: str, frames: list[np.ndarray], fps: float = 10.0) -> None:
    """Writes (H, W, 3) uint8 frames as a looping GIF, atomically."""
    with atomic_path(path) as tmp:
        imageio.mimsave(
            tmp,
            [np.ascontiguousarray(f) for f in frames],
            format="GIF",
            duration=1000.0 / fps,
            loop=0,
        )


def episode_gif(path: str, episode, title: str = "", scale: int = 4, fps: float = 10.0) -> None:
    """GIF of a recorded episode: the global view beside the upscaled 64x64
    observation, with the step, reward so far and, on the last frame, the outcome.

    Args:
        episode: a `lib.env.rollouts.Episode` recorded with frames and obs.
    """
    frames = []
    for t in range(len(episode.frames)):
        pair = side_by_side([episode.frames[t], upscale(episode.obs[t], scale)])
        frames.append(caption(pair, _step_text(episode, t, title)))
    if frames:
        frames += [frames[-1]] * int(fps)  # hold the last frame for a second
    save_gif(path, frames, fps)


def _step_text(episode, t: int, title: str) -> str:
    """A GIF frame's caption: title, step, return so far and, on the last frame, the
    outcome."""
    total = sum(float(r) for r in episode.reward[:t])  # in step order, as it accrued
    last = t == len(episode.frames) - 1
    return f"{title} step {t} return {total:+.2f}" + (f" {episode.outcome}" if last else "")


def comparison_gif(path: str, episodes: list, titles: list[str], fps: float = 10.0) -> None:
    """GIF of several recorded episodes of the same scene side by side (their
    global views), each captioned with its title, step, return and, once it has
    ended, its outcome; an episode that ends first holds its last frame.

    Args:
        episodes: `lib.env.rollouts.Episode`s recorded with frames.
        titles: one per episode.
    """
    steps = max(len(ep.frames) for ep in episodes)
    frames = []
    for t in range(steps):
        panels = []
        for ep, title in zip(episodes, titles):
            u = min(t, len(ep.frames) - 1)
            panels.append(caption(ep.frames[u], _step_text(ep, u, title)))
        frames.append(side_by_side(panels))
    if frames:
        frames += [frames[-1]] * int(fps)  # hold the last frame for a second
    save_gif(path, frames, fps)


def pyplot():
    """Matplotlib's pyplot on the file-only Agg backend, imported on first use rather
    than at a script's top (it adds about 0.4 s to every start, `--help` included)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, dpi: int = 90, tight: bool = False) -> None:
    """Writes a Matplotlib figure as a PNG atomically (a reader never sees half a file)
    and closes it; `tight` trims the margins (bbox_inches="tight")."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", **({"bbox_inches": "tight"} if tight else {}))
    plt.close(fig)
