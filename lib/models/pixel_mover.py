"""M's pixel mover: the dream of the next frames, made by moving the last real frame.

Beyond the paper. A map M moves V's latents by the robot's ego-motion and learns the
rest, and on a 14 x 14 grid of latents that blurs the people away within a few steps
(docs/experiments.md, 2026-12-07). The mover does the moving in pixels instead, where a
person is a sharp disc, and lets V encode the result:

1. The robot's own motion is known (`lib.models.ego_warp`): the pixel that frame t + k
   shows at p was, in frame t, at q_k(p), the composite of the k actions' turns and
   advances (`ego_warp.composite_sources`).
2. What moves on its own moves at constant velocity: a small dilated convolutional net
   reads frame t and frame t - 1 (ego-warped into frame t) and gives a velocity field
   u (pixels a step, in frame t's grid). The dream of frame t + k samples frame t once,
   at q_k(p) - k u(q_k(p)): no blur accumulates over the steps. For a person walking
   straight, u must equal its velocity along the tube it sweeps (behind it too, so that
   the floor it leaves is fetched), which the net learns from the frames alone.
3. The robot's body, drawn in the same place in every frame, stays: the pixels that
   never change in the training frames (`still`), and a pixel around them, are copied
   from frame t, and the
   moving part samples a frame t whose robot is painted over (`ERASE` pixels around it,
   in the mean colour of the ring just outside), so that no copy of it drifts away.

The mover learns from real episodes' frames and actions only (no label of the true
state), by the squared error of its dreamed frames against the real frames t + 1 ..
t + K, counted where q_k(p) falls inside frame t (the rest of the view is unknown).
`04b_train_mover.py` trains it.

Typical use::

    mover = PixelMover()
    u = mover.field(frame_t, mover.align_previous(frame_prev, a_prev))
    frame_k, seen = mover.render(u, frame_t, actions[:, :k])  # Variables / arrays
"""

from __future__ import annotations

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np

from lib import validate
from lib.devices import to_host
from lib.kernels import fastconv, sampler
from lib.kernels.box import box_mean
from lib.kernels.splat import splat
from lib.models import ego_warp

MOTIONS = ("sample", "splat")  # 04b --motion
ALPHA_BIAS = -4.0  # splat: the moving layer starts at 2 % of a pixel (the warp alone)
FILL = 7  # splat: the box (pixels) whose mean of the static layer fills where it moved from
DILATIONS = (1, 2, 4, 8, 1)  # the net's 3 x 3 layers: a receptive field of 33 pixels
STILL_SPREAD = 3.0  # a pixel is "still" if within this (of 255) of its median ...
STILL_SHARE = 0.97  # ... in this share of the training frames
ERASE = 2  # pixels around the still ones painted over before moving the frame
RING = 2  # the width of the ring outside them whose mean colour paints them


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """(S, S) bool: `mask` grown by `pixels` (a square neighbourhood)."""
    out = np.asarray(mask, bool)
    for _ in range(pixels):
        p = np.pad(out, 1)
        s0, s1 = out.shape
        out = np.any([p[i : i + s0, j : j + s1] for i in range(3) for j in range(3)], axis=0)
    return out


class PixelMover(chainer.Chain):
    """Constant-velocity mover of egocentric frames (see the module's text).

    Args:
        image_size: pixels per side of the frames (square, RGB).
        view_size: metres the view covers (`socnavenv`'s view_size).
        channels: channels of the net's hidden layers.

    Frames are float32 (N, 3, S, S) in [0, 1] (`to_planes` converts uint8 NHWC).
    """

    def __init__(self, image_size=64, view_size=8.0, channels=24, motion="sample"):
        super().__init__()
        (self.image_size, self.channels) = validate.counts(image_size=image_size, channels=channels)
        if not view_size > 0:
            raise ValueError(f"view_size must be > 0, got {view_size}")
        if motion not in MOTIONS:
            raise ValueError(f"unknown motion {motion!r}: one of {', '.join(MOTIONS)}")
        self.motion = motion
        self.view_size = float(view_size)
        self.offsets = ego_warp.grid_offsets(self.image_size, self.view_size)
        ch = self.channels
        with self.init_scope():
            self.layers = chainer.ChainList(
                *[
                    L.Convolution2D(9 if i == 0 else ch, ch, 3, pad=d, dilate=d)
                    for i, d in enumerate(DILATIONS)
                ]
            )
            # u starts at 0: the untrained mover is the ego-motion warp alone
            # splat: a third channel, the logit of the share of each pixel that moves
            outputs = 3 if motion == "splat" else 2
            self.out = L.Convolution2D(ch, outputs, 1, initialW=chainer.initializers.Zero())
        if motion == "splat":
            self.out.b.array[2] = ALPHA_BIAS
        self.add_persistent("still", np.zeros((self.image_size, self.image_size), np.float32))

    def config(self):
        """The constructor's arguments, JSON-ready."""
        return {
            "image_size": self.image_size,
            "view_size": self.view_size,
            "channels": self.channels,
            "motion": self.motion,
        }

    def set_still(self, frames) -> None:
        """Marks the pixels that (almost) never change over `frames` (N, S, S, 3) uint8:
        the robot's body, which every egocentric frame draws in the same place."""
        f = np.asarray(frames, np.float32)
        near = np.abs(f - np.median(f, axis=0)).max(axis=-1) < STILL_SPREAD
        self.still[...] = (near.mean(axis=0) > STILL_SHARE).astype(np.float32)

    def erased(self, cur):
        """Frames (N, 3, S, S) with the still pixels and `ERASE` around them painted in
        the mean colour of the `RING` pixels outside (array)."""
        xp = self.xp
        still = chainer.backend.CpuDevice().send(self.still) > 0
        erase = dilate(still, ERASE)
        ring = dilate(still, ERASE + RING) & ~erase
        cur = xp.asarray(cur)
        if not still.any():
            return cur
        fill = cur[:, :, xp.asarray(ring)].mean(axis=2)[:, :, None, None]
        mask = xp.asarray(erase.astype(np.float32))[None, None]
        return cur * (1.0 - mask) + fill * mask

    def field(self, cur, prev):
        """u (N, 2, S, S): the velocity field (rows, columns a step) in frame t's grid.

        Args:
            cur: frame t; prev: frame t - 1 in frame t's coordinates
                (`align_previous`); each (N, 3, S, S) float32.
        """
        h = F.concat([cur, prev, cur - prev], axis=1)
        if not fastconv.use_fast(h):  # CuPy, or chainer.config.fastconv False
            for layer in self.layers:
                h = F.relu(layer(h))
            return self.out(h)
        # on the CPU: NHWC, each dilated layer one GEMM (`lib.kernels.fastconv`), the
        # same weights (Chainer's layout, transposed in the graph)
        h = F.transpose(h, (0, 2, 3, 1))
        for layer, d in zip(self.layers, DILATIONS):
            h = F.pad(h, ((0, 0), (d, d), (d, d), (0, 0)), "constant")
            w = F.transpose(layer.W, (2, 3, 1, 0))
            h = fastconv.conv2d_nhwc(h, w, layer.b, 1, "relu", dilate=d)
        n, s = h.shape[0], self.image_size
        w = F.reshape(self.out.W, self.out.W.shape[:2])
        u = F.linear(F.reshape(h, (n * s * s, self.channels)), w, self.out.b)
        return F.transpose(F.reshape(u, (n, s, s, -1)), (0, 3, 1, 2))

    def _grid(self, rows, cols, dtype=np.float32):
        """(N, 2, S, S) float32 sampling grid of `F.spatial_transformer_sampler` (x, i.e.
        the column, first; -1 and 1 are the first and last pixels' centres) from
        (N, S²) fractional pixel indices."""
        s = self.image_size
        n = rows.shape[0]
        g = np.stack([cols, rows], axis=1) * (2.0 / (s - 1)) - 1.0
        return g.reshape(n, 2, s, s).astype(dtype)

    def align_previous(self, prev, a_prev):
        """Frame t - 1 (N, 3, S, S) moved into frame t's coordinates by the action
        between them, a_prev (N, 2): what stood still in the room lines up (array)."""
        rows, cols = ego_warp.composite_sources(np.asarray(a_prev)[:, None], self.offsets)
        with chainer.no_backprop_mode():
            return sampler.sample(np.asarray(prev, np.float32), self._grid(rows, cols)).array

    def prepare(self, u, cur) -> tuple:
        """What `render` computes from the field and frame t alone, whatever k: frame t
        with the robot painted over, and for the splat motion its moving and still
        layers. Pass it to every `render` of the same (u, cur): a dream of K frames
        computes it once (a tuple of Variables, or of arrays without a graph)."""
        base = self.erased(cur)
        if self.motion != "splat":
            return (base,)
        # split_axis, not slices: Chainer's slice backward is np.add.at
        u_r, u_c, logit = F.split_axis(u, 3, axis=1)
        alpha = F.sigmoid(logit)
        still = base * (1.0 - alpha)
        fill = box_mean(still, FILL) / (box_mean(1.0 - alpha, FILL) + 1e-3)
        still = still + fill * alpha
        layer = F.concat([alpha, alpha * base], axis=1)
        if chainer.config.enable_backprop:
            return u_r, u_c, still, layer
        return tuple(v.array for v in (u_r, u_c, still, layer))  # to index and keep

    def render(self, u, cur, actions, prepared=None):
        """The dream of frame t + k after the k actions (N, k, 2) a_t .. a_{t+k-1}, by
        the mover's motion (`_sampled` or `_splatted`): (frame (N, 3, S, S) Variable,
        seen (N, 1, S, S) float32, 1 where the pixel's background lies inside frame t).
        `prepared`: `prepare(u, cur)`, computed here if not given."""
        prepared = self.prepare(u, cur) if prepared is None else prepared
        motion = self._splatted if self.motion == "splat" else self._sampled
        frame, seen = motion(u, cur, actions, prepared)
        keep = dilate(chainer.backend.CpuDevice().send(self.still) > 0, 1)  # with its rim
        keep = self.xp.asarray(keep.astype(np.float32))[None, None]
        return frame * (1.0 - keep) + cur * keep, seen

    def _splatted(self, field, cur, actions, prepared):
        """Two layers (`prepare`): what moves (the share alpha of each pixel of the
        robot-less frame t) is splatted forward, each pixel to where k steps of its
        velocity and the composite ego-motion bring it; the rest (frame t with the moved
        share filled by the mean of its `FILL` x `FILL` surroundings) is sampled back as
        the warp does."""
        xp, s = self.xp, self.image_size
        n, k = cur.shape[0], np.asarray(actions).shape[1]
        u_r, u_c, still, layer = prepared
        rows, cols = ego_warp.composite_sources(np.asarray(actions), self.offsets)
        seen = (rows >= 0) & (rows <= s - 1) & (cols >= 0) & (cols <= s - 1)
        dtype = cur.dtype
        grid = self._grid(np.clip(rows, 0, s - 1), np.clip(cols, 0, s - 1), dtype)
        behind = sampler.sample(still, grid)
        # where each pixel of frame t lands in frame t + k: k steps of u, then the ego-motion
        m = xp.asarray(ego_warp.composite_targets(np.asarray(actions), self.offsets), dtype)
        r0 = xp.asarray(np.repeat(np.arange(s, dtype=dtype), s))[None]
        c0 = xp.asarray(np.tile(np.arange(s, dtype=dtype), s))[None]
        r = r0 + k * F.reshape(u_r, (n, s * s))
        c = c0 + k * F.reshape(u_c, (n, s * s))
        coef = [F.broadcast_to(m[:, i, j, None], (n, s * s)) for i in range(2) for j in range(3)]
        rt = coef[0] * r + coef[1] * c + coef[2]
        ct = coef[3] * r + coef[4] * c + coef[5]
        moved = F.reshape(splat(F.reshape(layer, (n, 4, s * s)), rt, ct, s), (n, 4, s, s))
        cover, colour = F.split_axis(moved, [1], axis=1)
        norm = F.maximum(cover, xp.ones_like(cover.array))
        frame = F.broadcast_to(1.0 - cover / norm, behind.shape) * behind + colour / F.broadcast_to(
            norm, behind.shape
        )
        return frame, seen.reshape(-1, 1, s, s).astype(np.float32)

    def _sampled(self, u, cur, actions, prepared):
        """Sampling back: frame t at q_k(p) - k u(q_k(p)) (the module's text, 2).
        seen is 1 where the pixel's source lies inside frame t (its value is grounded
        there; elsewhere it repeats frame t's edge, an unknown)."""
        k = np.asarray(actions).shape[1]
        rows, cols = ego_warp.composite_sources(np.asarray(actions), self.offsets)
        s = self.image_size
        seen = (rows >= 0) & (rows <= s - 1) & (cols >= 0) & (cols <= s - 1)
        seen = seen.reshape(-1, 1, s, s).astype(np.float32)
        # sample u at q_k, then frame t at q_k - k u(q_k), in grid units
        rows = np.clip(rows, 0, s - 1)
        cols = np.clip(cols, 0, s - 1)
        base = self._grid(rows, cols)
        uq = sampler.sample(u, base)
        uq_r, uq_c = F.split_axis(uq, 2, axis=1)
        step = F.concat([uq_c, uq_r], axis=1) * np.float32(k * 2.0 / (s - 1))
        return sampler.sample(prepared[0], base - step), seen

    def loss(self, cur, prev, actions, targets):
        """Mean squared error of the dreamed frames t + 1 .. t + K against the real ones,
        over the pixels seen (`render`), averaged over the K horizons.

        Args:
            cur, prev: as `field`; actions: (N, K, 2); targets: (N, K, 3, S, S) float32.
        """
        u = self.field(cur, prev)
        prepared = self.prepare(u, cur)
        total = 0
        for k in range(1, actions.shape[1] + 1):
            frame, seen = self.render(u, cur, actions[:, :k], prepared)
            err = F.sum(F.square(frame - targets[:, k - 1]) * seen) / max(seen.sum() * 3, 1.0)
            total = total + err
        return total / actions.shape[1]

    def dream(self, cur, prev, a_prev, actions, first=None):
        """uint8 frames (N, K, S, S, 3): the dream of frames t + 1 .. t + K, no graph.

        Args:
            cur, prev: frames t and t - 1, uint8 (N, S, S, 3); a_prev (N, 2) the action
                between them; actions (N, K, 2); first: (N,) bool, rows whose t is an
                episode's first frame (no t - 1: the net sees no motion there).
        """
        cur, prev = to_planes(cur), to_planes(prev)
        aligned = self.align_previous(prev, a_prev)
        if first is not None:
            aligned = np.where(np.asarray(first)[:, None, None, None], cur, aligned)
        out = []
        with chainer.no_backprop_mode(), chainer.using_config("train", False):
            u = self.field(cur, aligned)
            prepared = self.prepare(u, cur)
            for k in range(1, actions.shape[1] + 1):
                out.append(to_frames(self.render(u, cur, actions[:, :k], prepared)[0].array))
        return np.stack(out, axis=1)


def to_planes(frames) -> np.ndarray:
    """uint8 (N, S, S, 3) frames as float32 (N, 3, S, S) in [0, 1]."""
    return np.ascontiguousarray(np.asarray(frames, np.float32).transpose(0, 3, 1, 2) / 255.0)


def to_frames(planes) -> np.ndarray:
    """`to_planes`' inverse: float planes (N, 3, S, S) in [0, 1] (any device) as the
    uint8 frames (N, S, S, 3) on the host that V reads, a dreamed frame quantised as a
    real one is."""
    frames = np.clip(to_host(planes), 0.0, 1.0) * 255.0 + 0.5
    return np.ascontiguousarray(frames.astype(np.uint8).transpose(0, 2, 3, 1))


class LatentDream:
    """The mover's dream read as V's z: from the real frames t - 1 and t of held-out
    episodes, the z (V's means) of the dreamed frame t + k under the real actions (the
    last one repeated past the episode's end, as M's forecasts do).

    Args:
        mover: a trained `PixelMover`.
        vae: V (`ConvVAE`), whose encoder reads the dreamed frames.
        frames: (F, S, S, 3) uint8, the episodes' frames in `data.mu`'s order.
        batch: frames moved and encoded at once.
    """

    def __init__(self, mover, vae, frames, batch: int = 256):
        from lib.models.vae import make_encoder

        self.mover, self.vae, self.frames, self.batch = mover, vae, frames, int(batch)
        self.encoder = make_encoder(vae)
        self._key = self._fields = None  # the last starts' velocity fields

    def _planes(self, index):
        """The frames `index` as float planes (N, 3, S, S), on the mover's device."""
        return self.mover.xp.asarray(to_planes(self.frames[index]))

    def _field(self, data, starts):
        """The velocity fields of the start frames (N, C, S, S), kept for the next k of
        the same starts; computed `batch` frames at a time (memory)."""
        key = np.asarray(starts).tobytes()
        if key != self._key:
            episode = np.searchsorted(data.frame_offsets, starts, side="right") - 1
            first = starts == data.frame_offsets[episode]
            step = starts - episode  # a_t's row; a_{t-1} is the one before
            a_prev = data.action[np.maximum(step - 1, 0)]
            before = np.where(first, starts, starts - 1)
            fields = []
            with chainer.no_backprop_mode(), chainer.using_config("train", False):
                for i in range(0, len(starts), self.batch):
                    sl = slice(i, i + self.batch)
                    cur = self._planes(starts[sl])
                    aligned = self.mover.align_previous(self._planes(before[sl]), a_prev[sl])
                    xp = self.mover.xp
                    aligned = xp.where(xp.asarray(first[sl])[:, None, None, None], cur, aligned)
                    fields.append(self.mover.field(cur, aligned).array)
            self._key, self._fields = key, np.concatenate(fields)
        return self._fields

    def z(self, data, starts, k: int) -> np.ndarray:
        """(N, Z) float32: V's mean z of the dream of frame starts + k."""
        from lib.models.vae import encode_frames

        starts = np.asarray(starts)
        u = self._field(data, starts)
        episode = np.searchsorted(data.frame_offsets, starts, side="right") - 1
        step, last = starts - episode, data.step_offsets[episode + 1] - 1
        acts = np.stack([data.action[np.minimum(step + j, last)] for j in range(k)], axis=1)
        out = []
        with chainer.no_backprop_mode(), chainer.using_config("train", False):
            for i in range(0, len(starts), self.batch):
                sl = slice(i, i + self.batch)
                frame = self.mover.render(u[sl], self._planes(starts[sl]), acts[sl])[0].array
                out.append(to_frames(frame))
        frames = np.concatenate(out)
        return encode_frames(self.vae, frames, encoder=self.encoder)[0].astype(np.float32)
