"""Controllers played in the pixel mover's dream: frames moved, read by V, judged by M.

Beyond the paper. `lib.control.agent.dream_rollouts` plays controllers inside M alone:
z comes from M's own samples. M's latent dream loses the people within a few steps
(docs/experiments.md), so its returns rank controllers at random. Here the world the
controller sees is made in pixels instead (`lib.models.pixel_mover`):

1. A dream starts from two real frames of an episode, t - 1 and t, and the action
   between them; M reads z_{t-1} and a_{t-1}, so that its state at t has seen one step.
2. Each step, C reads [z_t, h_t] (z_t: V's mean of the dreamed frame, as the real
   agent reads a real one) and acts; M reads [z_t, a_t]: its reward and done heads
   give the step's reward and whether the episode ends (thresholded, or an outcome
   head's soft ending, exactly as `dream_rollouts`), and its state becomes h_{t+1}.
3. The next frame is the mover's: the anchor frame (the last real or re-anchored one)
   moved by its velocity field and by the composite ego-motion of the actions since
   the anchor. Every `reanchor` steps (the horizon the mover trained on) the dreamed
   frame becomes the anchor, with the frame before it as its t - 1, and the field is
   computed again from them: what moved keeps moving.

What the mover cannot know (the view that comes into sight) repeats the anchor's edge
(`PixelMover.render`). Only the dreams still running are computed.

Typical use::

    starts = episode_starts(first_two_frames(frames, data), data, episodes)
    returns, lengths = pixel_dream_rollouts(rnn, mover, vae, params, which, starts)
"""

from __future__ import annotations

from typing import NamedTuple

import chainer
import numpy as np

from lib.devices import to_host
from lib.env import socnavenv as sn
from lib.kernels.fast_encoder import make_encoder
from lib.models.controller import act_batch, unflatten
from lib.models.mdn_rnn import DONE_THRESHOLD
from lib.models.pixel_mover import to_frames, to_planes

REANCHOR = 8  # steps between re-anchorings: 04b's default --horizon


class Starts(NamedTuple):
    """Where pixel dreams start: per dream, real frames t - 1 and t, uint8 (N, S, S, 3),
    the action between them (N, 2), z_{t-1} (N, Z) (V's mean), and `first` (N,) bool:
    t is an episode's first frame (no t - 1: the mover sees no motion)."""

    prev: np.ndarray
    cur: np.ndarray
    a_prev: np.ndarray
    z_prev: np.ndarray
    first: np.ndarray


def first_two_frames(frames: np.ndarray, data) -> np.ndarray:
    """(E, 2, S, S, 3): frames 0 and 1 of each episode of `data` (a `LatentEpisodes`
    whose frames, in its order, are `frames`); frame 0 twice for an episode of no step."""
    f0 = data.frame_offsets[:-1]
    pick = np.minimum(f0[:, None] + np.arange(2), data.frame_offsets[1:, None] - 1)
    return frames[pick]


def episode_starts(first_two: np.ndarray, data, episodes) -> Starts:
    """The `Starts` of dreams from the second frame of each of `episodes` (episode
    indices of `data`, a `LatentEpisodes`): frames 0 and 1 (`first_two`, (E, 2, S, S, 3)
    as `first_two_frames` gives) and the first action; an episode of no step starts at
    frame 0."""
    episodes = np.asarray(episodes, np.int64)
    short = data.lengths[episodes] < 1
    return Starts(
        prev=first_two[episodes, 0],
        cur=first_two[episodes, 1],
        a_prev=data.action[np.minimum(data.step_offsets[episodes], len(data.action) - 1)],
        z_prev=data.mu[data.frame_offsets[episodes]].astype(np.float32),
        first=short,
    )


def pixel_dream_rollouts(
    rnn,
    mover,
    vae,
    params,
    which,
    starts: Starts,
    max_steps: int = sn.MAX_STEPS,
    done_threshold: float = DONE_THRESHOLD,
    done_pos_weight: float = 1.0,
    endings: bool = False,
    reanchor: int = REANCHOR,
    encoder=None,
    on_frame=None,
):
    """Plays controllers in the mover's dream (the module's text), all in lockstep.

    Args:
        rnn: M with reward and done heads, or an outcome head (`dream_rollouts`).
        mover: a trained `PixelMover`; vae: V (its encoder reads the dreamed frames).
        params: (P, n_params) controllers; which: (N,) the row of each dream.
        starts: `Starts` of the N dreams.
        max_steps, done_threshold, done_pos_weight, endings: as `dream_rollouts`
            (the first dreamed step is the episode's second; `max_steps` counts from it).
        reanchor: steps between re-anchorings (>= 1).
        encoder: `make_encoder(vae)` to reuse.
        on_frame: called each step as on_frame(rows, frames) with the dreams still
            running (indices) and the uint8 frames (len(rows), S, S, 3) their
            controllers see (to draw the dream).

    Returns:
        as `dream_rollouts`: (returns, lengths) and with `endings` the (N, 4) endings.
    """
    from lib.control.agent import DreamLedger  # agent imports nothing from here

    if not rnn.can_dream:
        raise ValueError("dreaming needs an M with reward and done heads (--mode reward or dream)")
    if reanchor < 1:
        raise ValueError(f"reanchor must be >= 1, got {reanchor}")
    n = len(which)
    if len(starts.cur) != n:
        raise ValueError(f"{len(starts.cur)} starts for {n} dreams")
    encoder = make_encoder(vae) if encoder is None else encoder
    device = rnn.device
    weights, biases = (
        device.send(w) for w in unflatten(params, rnn.z_size, rnn.hidden_size, rnn.action_size)
    )
    which = np.asarray(which)
    ledger = DreamLedger(rnn, n, done_threshold, done_pos_weight, endings)

    # M's state at t: it has read z_{t-1} and a_{t-1} (nothing at an episode's start)
    state = rnn.initial_state(n)
    out = rnn.step(device.send(starts.z_prev), device.send(starts.a_prev), state)
    keep = device.send(~starts.first)[:, None]
    state = tuple(rnn.xp.where(keep, s1, s0) for s1, s0 in zip(out.state, state))

    live = np.arange(n)  # the dreams still running, in the arrays below
    with chainer.no_backprop_mode(), chainer.using_config("train", False):
        anchor = to_planes(starts.cur)
        aligned = mover.align_previous(to_planes(starts.prev), starts.a_prev)
        aligned = np.where(starts.first[:, None, None, None], anchor, aligned)
        u = mover.field(anchor, aligned).array
        prepared = mover.prepare(u, anchor)  # what every render from it shares
        since = np.zeros((n, 0, 2), np.float32)  # the actions since the anchor
        last = anchor  # the frame the controllers see now (planes)
        for _ in range(max_steps):
            seen = to_frames(last)
            if on_frame is not None:
                on_frame(live.copy(), seen)
            z = encoder(seen)[0]
            h = state[0]
            actions = act_batch(weights, biases, device.send(which[live]), z, h)
            out = rnn.step(z, actions, state)
            state = out.state
            running = ledger.record(out, live)
            if not running.any():
                break
            actions = to_host(actions).astype(np.float32)
            # the next frame: the anchor moved by the actions since it
            since = np.concatenate([since, actions[:, None]], axis=1)
            frame = mover.render(u, anchor, since, prepared)[0].array
            if since.shape[1] == reanchor:  # the dreamed frame becomes the anchor
                aligned = mover.align_previous(last, actions)
                anchor, since = frame, since[:, :0]
                u = mover.field(anchor, aligned).array
                prepared = mover.prepare(u, anchor)
            last = frame
            if not running.all():  # drop the dreams that ended
                keep = np.flatnonzero(running)
                live = live[keep]
                state = tuple(s[device.send(keep)] for s in state)
                u, anchor, since, last = u[keep], anchor[keep], since[keep], last[keep]
                prepared = tuple(p[keep] for p in prepared)
    return ledger.result()
