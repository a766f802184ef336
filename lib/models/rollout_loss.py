"""The rollout loss: the map M trained on its own open-loop dream (04 --rollout-steps).

Beyond the paper. 04's loss scores M one step ahead from real inputs (teacher forcing);
the dream instead chains M's own predictions, and their errors compound. Here, beside
the one-step loss, M dreams K steps from a few real start frames of every training
chunk, under the real actions, as the dream at tau 0 does (`MapRNN.rollout`), and is
scored on the whole dream, with gradients through every step (backpropagation through
its own predictions, as PlaNet's latent overshooting and multi-step model losses do):

- **z**: the squared error of each dreamt z against the real z of that step, per latent;
- **endings**: with the outcome head, the cross-entropy of each dreamt step's ending
  (running, success, collision, out of map) against the real one, weighted per class
  as the one-step loss weights them. So the heads learn to read the dream's states,
  which is where the dream, the planner and the collision forecast read them.

The start states come from the training pass (`SequenceOutput.h` and `.cells`, no
gradient): a rollout from step t0 starts from the state M had before t0. Steps past an
episode's end weigh nothing (the chunk's mask).

Typical use (04's training loop)::

    loss, state = loss_fn(z_in, a, z_next, mask, reward, done, state0, outcome)
    z_loss, end_loss = rollout_loss(m, loss_fn.last_output, z, a, z_next, mask, outcome,
                                    state0, steps=10, starts=4, rng=rng)
    loss = loss + weight * (z_loss + end_loss)
"""

from __future__ import annotations

import chainer.functions as F
import numpy as np

from lib.devices import to_host
from lib.env import socnavenv as sn


def rollout_starts(
    batch: int, chunk: int, steps: int, starts: int, rng, valid=None, ends=None, endings=0.0
) -> np.ndarray:
    """(batch * starts,) start steps t0, row-major (sequence 0's first).

    With `endings` 0, uniform in [0, chunk - K], K = min(steps, chunk), wherever the
    episode ends in the chunk (a dream that starts past the end weighs nothing). With
    `endings` > 0, inside each sequence's `valid` counted steps, in [0, min(valid - 1,
    chunk - K)]; and where the chunk holds its episode's ending (`ends`), with
    probability `endings` from the K steps before it, [max(0, valid - K), ...], so the
    dream meets the real ending: the states that collisions and arrivals come from.

    Args:
        valid: (batch,) ints, each sequence's counted steps (its mask's sum), >= 1.
        ends: (batch,) bools, the chunk's last counted step ends the episode.
        endings: the fraction described above, in [0, 1].
    """
    k = min(int(steps), int(chunk))
    if not endings:
        return rng.integers(0, chunk - k + 1, size=(batch, int(starts))).reshape(-1)
    valid = np.maximum(np.asarray(valid, np.int64), 1)
    high = np.minimum(valid - 1, chunk - k)[:, None]
    near = np.asarray(ends, bool)[:, None] & (rng.random((batch, int(starts))) < endings)
    low = np.where(near, np.minimum(np.maximum(valid - k, 0)[:, None], high), 0)
    return (
        (low + np.floor(rng.random((batch, int(starts))) * (high - low + 1)))
        .astype(np.int64)
        .reshape(-1)
    )


def rollout_loss(model, out, z, a, z_next, mask, outcome, state0, steps, starts, rng, endings=0.0):
    """The rollout loss of one training chunk (see the module docstring).

    Args:
        model: a `MapRNN` (with `rollout`).
        out: the chunk's training pass (`MDNRNNLoss.last_output`): its `h` and `cells`.
        z: (B, T, Z) the real latents (not scheduled inputs); a: (B, T, A) actions;
            z_next: (B, T, Z) targets; mask: (B, T) 1 where a step counts.
        outcome: (B, T) int ending codes, or None (no ending loss).
        state0: the chunk's initial (h, c) arrays, or None (zeros).
        steps: K, the dream's length (cut to the chunk's).
        starts: rollouts per sequence.
        rng: numpy Generator of the start steps (`rollout_starts`, drawn first).
        endings: `rollout_starts`' fraction of dreams that start within K steps of
            their episode's ending (0: starts anywhere in the chunk).

    Returns:
        (z_loss, ending_loss): scalar Variables; ending_loss is None without the
        outcome head or `outcome`.
    """
    xp = model.xp
    valid = ends = None
    if endings:
        valid = (to_host(mask) > 0).sum(axis=1)
        ends = np.zeros(len(valid), bool)
        if outcome is not None:
            last = to_host(outcome)[np.arange(len(valid)), np.maximum(valid - 1, 0)]
            ends = (valid > 0) & (last != sn.RUNNING)
    z, a, z_next = (xp.asarray(v, np.float32) for v in (z, a, z_next))
    mask = xp.asarray(mask, np.float32)
    batch, chunk = mask.shape
    k = min(int(steps), chunk)
    t0 = rollout_starts(batch, chunk, k, starts, rng, valid, ends, endings)
    rows = np.repeat(np.arange(batch), int(starts))
    if state0 is None:
        state0 = model.initial_state(batch)
    h_init, c_init = (s.array if hasattr(s, "array") else s for s in state0)
    hs = out.h.array
    before = np.maximum(t0 - 1, 0)
    first = xp.asarray(t0 == 0)[:, None]
    h = xp.where(first, h_init[rows], hs[rows, before])
    c = xp.where(first, c_init[rows], out.cells[rows, before])
    idx = t0[:, None] + np.arange(k)[None, :]  # (N, K) the dreamt steps
    zs, h_roll = model.rollout(z[rows, t0], a[rows[:, None], idx], (h, c))
    weight = mask[rows[:, None], idx]  # (N, K)
    n = max(float(weight.sum()), 1.0)
    err = zs - z_next[rows[:, None], idx]
    z_loss = F.sum(F.mean(err * err, axis=2) * weight) / n
    if outcome is None or not model.outcome_head:
        return z_loss, None
    codes = xp.asarray(outcome)[rows[:, None], idx].reshape(-1).astype(np.int32)
    classes = xp.where(codes == sn.TIMEOUT, sn.RUNNING, codes).astype(np.int32)
    logit = model.outcome(F.reshape(h_roll, (len(codes), model.hidden_size)))
    class_weight = xp.asarray(model.outcome_weights, np.float32)[classes]
    ce = F.softmax_cross_entropy(logit, classes, reduce="no")
    return z_loss, F.sum(ce * class_weight * weight.reshape(-1)) / n
