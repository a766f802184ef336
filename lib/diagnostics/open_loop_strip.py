"""M's open loop as a picture: real frames over V's decoding of M's own predictions.

From a real start (M reads the episode's first `warmup` real z and actions), M runs on
its own predictions at temperature 0 (the mean of its most likely mixture component)
under the episode's real actions, for `steps` steps. V decodes each predicted z; the
picture puts the real frames of the same steps above them. 06 draws it for one
held-out episode (`rnn_<mode>_openloop.png`); 04 adds it to its TensorBoard events
after every epoch, so the dream's drift shows as M trains. `mover_picture` draws the
pixel mover's dream (`lib.models.pixel_mover`) from the same start the same way.
"""

from __future__ import annotations

import numpy as np

from lib import devices, drawing
from lib.models.mdn_rnn import sample
from lib.models.vae import decode_latents, encode_frames


def open_loop(model, mu, actions, warmup: int, steps: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """M's open-loop latents from step `warmup` of an episode.

    Args:
        model: an M (`MDNRNN` or `MapRNN`: `step(z, a, state)`).
        mu: (T + 1, Z) the episode's real z (V's means); actions: (T, A).
        warmup: real steps M reads first (cut to T - 1); steps: open-loop steps (cut
            to what the episode has left).
        rng: the generator of `sample` (unused at temperature 0).

    Returns:
        (latents (K, Z), the real frames' indices (K,) they predict: warmup + 1 ...).
    """
    t_len = len(actions)
    warm = min(int(warmup), max(t_len - 1, 0))
    state = None
    for t in range(warm):
        state = model.step(mu[t][None], actions[t][None], state).state
    z = mu[warm][None]
    horizon = min(int(steps), t_len - warm)
    opened = []
    for t in range(warm, warm + horizon):
        out = model.step(z, actions[t][None], state)
        state = out.state
        z = devices.to_host(sample(out.mixture, 0.0, rng))
        opened.append(z[0])
    return np.array(opened), np.arange(warm + 1, warm + 1 + horizon)


def strip(top, bottom, text: str) -> np.ndarray:
    """Two rows of frames, upscaled 3 times, with a caption."""
    return drawing.caption(drawing.upscale(drawing.grid([list(top), list(bottom)]), 3), text)


def open_loop_picture(model, vae, mu, actions, frames, warmup: int, steps: int, rng):
    """The picture (uint8 H x W x 3) of `open_loop`: the real `frames` (T + 1, H, W, 3)
    of the predicted steps over V's decoding of M's latents; and those latents and the
    steps' indices."""
    opened, idx = open_loop(model, mu, actions, warmup, steps, rng)
    text = (
        f"open loop from step {idx[0] - 1}: real (top) vs M on its own predictions with "
        "the real actions (bottom)"
    )
    return strip(frames[idx], decode_latents(vae, opened), text), opened, idx


def mover_picture(mover, vae, mu, actions, frames, warmup: int, steps: int):
    """The pixel mover's open loop from the start `open_loop` uses: the real frames
    (top), the mover's dream from the real frames warmup - 1 and warmup under the real
    actions (middle), and V's decoding of V's z of the dream (bottom, what M's heads
    read). Returns (picture uint8 H x W x 3, the dream's z (K, Z), the steps' indices)."""
    t_len = len(actions)
    warm = min(int(warmup), max(t_len - 1, 0))
    horizon = min(int(steps), t_len - warm)
    idx = np.arange(warm + 1, warm + 1 + horizon)
    prev = max(warm - 1, 0)
    dream = mover.dream(
        frames[warm][None], frames[prev][None], actions[max(warm - 1, 0)][None],
        actions[warm : warm + horizon][None], first=np.array([warm == 0]),
    )[0]  # fmt: skip
    z = encode_frames(vae, dream)[0]
    rows = [list(frames[idx]), list(dream), list(decode_latents(vae, z))]
    text = (
        f"pixel mover, open loop from step {warm}: real (top), the mover's dream with the "
        "real actions (middle), V's reading of it (bottom)"
    )
    return drawing.caption(drawing.upscale(drawing.grid(rows), 3), text), z, idx
