"""M's look-ahead head (beyond the paper): will holding an action end the episode badly?

For the agent's present state and any candidate action a, the head gives the
probability that holding a for the next k steps (k in `HORIZONS`, 0.1 s each)
ends the episode in a collision or outside the room. It is the planner's look-ahead
(`lib.control.lookahead_planner`): a direct multi-step forecast from M's state, where
iterating M's one-step z prediction ten times foresees few collisions (its
recall within 10 steps is 0.27; docs/experiments.md).

Input features (`features`): V's z of this frame and of the two before it, as
[z_t, z_t - z_{t-1}, z_{t-1} - z_{t-2}] (the people's motion, which M's h barely
carries), then M's h_t; at an episode's first steps the missing frames repeat the
first. A head with `pixels` > 0 also reads the frame's centre (`crops`: the 5 m
square around the robot, pooled to 20 x 20 px, 0.25 m a pixel) of the same three
frames, as [p_t, p_t - p_{t-1}, p_{t-1} - p_{t-2}] (`pixel_features`): V's spatial z
has cells of 1.3 m, and a person is 0.5 m wide. The features are standardised by
the mean and std of the training rows, kept in the link (`mean`, `std`: saved with
the weights).

Architecture: the state part and the action part of the first layer are separate
products, so a state's first layer is computed once for all of its K candidate
actions: relu(s(x) + W_a a) -> relu(W_2 . + b_2) -> one logit per horizon. The state
part s(x) is one of two trunks (`TRUNKS`):
- "dense": W_s x + b, one product over all the standardised features;
- "conv" (a head with pixels only): W_s x_zh + b over [z, motion, h], plus a small
  convolutional net over the crops as a 9-channel image (three frames' colours, the
  frame and its two differences; `CONV_LAYERS`), flattened and projected. A person is
  the same few pixels wherever they stand, which a convolution learns once, where a
  dense layer must learn it at each of the 400 places
  (docs/experiments.md, "A convolutional trunk for the crops").

`forward` is the Chainer graph (training); `risk` the same numbers in plain array
operations (NumPy or CuPy), for planning.
"""

from __future__ import annotations

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
from chainer import backend

from lib.kernels.fastconv import ConvolutionNHWC

# Steps ahead the head forecasts; the planner reads one of them (its horizon).
HORIZONS = (3, 5, 10)
# Heads trained apart whose mean the planner reads (07b_train_lookahead.py --heads).
MEMBERS = 3
# The frame's centre a head with pixels reads: this fraction of the view's side
# (5 m of 8), average-pooled by POOL x POOL.
CROP_FRACTION = 5 / 8
POOL = 2
# Pixel features' std floor (in [0, 1] units): a pixel nearly always of one colour (the
# robot's own body) would otherwise be scaled up a thousandfold when a person covers it.
PIXEL_STD_FLOOR = 0.05
# The two ways a head reads its state (module docstring).
TRUNKS = ("dense", "conv")
# The conv trunk's layers over the (side, side, 9) crops image: (channels out, kernel,
# stride), valid padding, relu (20 x 20 -> 18 x 18 -> 8 x 8 -> 3 x 3 for 64 px frames).
CONV_LAYERS = ((32, 3, 1), (32, 4, 2), (64, 4, 2))
# The conv trunk's input scale: a frame's colours in [0, 1] as they are, its
# differences (mostly 0, a moving person +-0.1 to 0.5) multiplied by this.
DIFF_SCALE = 4.0


def features(z, z1, z2, h):
    """The head's input [z, z - z1, z1 - z2, h], (B, 3 Z + H) float32, any xp.

    z, z1, z2: (B, Z) V's z of this frame and the one and two before; h: (B, H) M's state.
    """
    xp = backend.get_array_module(z)
    return xp.concatenate([z, z - z1, z1 - z2, h], axis=1).astype(np.float32, copy=False)


def crop_box(image_size: int) -> tuple[int, int]:
    """(first, last + 1) pixel of the frame's centre square that `crops` pools."""
    side = int(image_size * CROP_FRACTION) // POOL * POOL
    if side < POOL:
        raise ValueError(f"a {image_size} px frame is too small to crop")
    first = (image_size - side) // 2
    return first, first + side


def pixel_size(image_size: int) -> int:
    """The length of one frame's `crops` vector: (side / POOL)^2 x 3 colours."""
    first, last = crop_box(image_size)
    return ((last - first) // POOL) ** 2 * 3


def crops(images):
    """(B, pixel_size) uint8: each frame's centre square, average-pooled POOL x POOL and
    rounded (the stored rows and the planner see the same values).

    images: (B, S, S, 3) uint8 frames, host arrays.
    """
    images = np.asarray(images)
    first, last = crop_box(images.shape[1])
    b, side = len(images), (last - first) // POOL
    part = images[:, first:last, first:last].astype(np.uint16)
    total = part.reshape(b, side, POOL, side, POOL, 3).sum(axis=(2, 4))
    return ((total + POOL * POOL // 2) // (POOL * POOL)).astype(np.uint8).reshape(b, -1)


def pixel_features(recent):
    """[p, p - p1, p1 - p2] / 255, (B, 3 P) float32 (any xp), from `recent` (B, 3, P): the
    `crops` of this frame and of the one and two before, as the planner and the rows
    keep them."""
    xp = backend.get_array_module(recent)
    p, p1, p2 = (xp.asarray(recent[:, j], np.float32) * np.float32(1 / 255) for j in range(3))
    return xp.concatenate([p, p - p1, p1 - p2], axis=1)


def conv_sizes(pixels: int) -> tuple[int, int]:
    """(crop side, side of the conv trunk's last map) for crops of `pixels` values a
    frame (`ValueError` when they are not a square of 3 colours or too small)."""
    side = round(np.sqrt(pixels / 3))
    if side * side * 3 != pixels:
        raise ValueError(f"the conv trunk reads square crops of 3 colours, not {pixels} values")
    out = side
    for _, k, stride in CONV_LAYERS:
        out = (out - k) // stride + 1
    if out < 1:
        raise ValueError(
            f"the conv trunk needs crops of 12 px or more a side (frames of 39 px or more), "
            f"got {side}"
        )
    return side, out


def row_features(x, crops_rows=None):
    """A head's float32 input from stored rows: `x` (N, 3 Z + H), and for a head with
    pixels `crops_rows` (N, 3, P) uint8, this frame's `crops` and the two before."""
    x = np.asarray(x, np.float32)
    if crops_rows is None:
        return x
    return np.concatenate([x, pixel_features(np.asarray(crops_rows))], axis=1)


class LookaheadHead(chainer.Chain):
    """P(collision or exit within k steps | hold action a), from [z, motion, h].

    Args:
        z_size: V's z size; hidden_size: M's LSTM size; action_size: actions (2).
        width: hidden units of both layers.
        horizons: the k's, increasing.
        pixels: the length of one frame's `crops` (`pixel_size`) that the head also
            reads, or 0 for [z, motion, h] only.
        trunk: "dense" or "conv" (pixels > 0 only): how the state is read (module
            docstring).
    """

    def __init__(self, z_size, hidden_size, action_size=2, width=256, horizons=HORIZONS,
                 pixels=0, trunk="dense"):  # fmt: skip
        super().__init__()
        horizons = tuple(int(k) for k in horizons)
        if not horizons or list(horizons) != sorted(set(horizons)) or horizons[0] < 1:
            raise ValueError(f"horizons must be increasing whole numbers >= 1, got {horizons}")
        if int(pixels) != pixels or pixels < 0:
            raise ValueError(f"pixels must be a whole number >= 0, got {pixels}")
        self.z_size, self.hidden_size = int(z_size), int(hidden_size)
        self.action_size, self.width, self.horizons = int(action_size), int(width), horizons
        if trunk not in TRUNKS:
            raise ValueError(f"trunk must be one of {TRUNKS}, got {trunk!r}")
        if trunk == "conv" and not pixels:
            raise ValueError("a conv trunk reads the frames' crops: it needs pixels > 0")
        self.pixels, self.trunk = int(pixels), trunk
        size = self.feature_size
        self.add_persistent("mean", np.zeros(size, np.float32))
        self.add_persistent("std", np.ones(size, np.float32))
        with self.init_scope():
            if trunk == "conv":
                side, out = conv_sizes(self.pixels)
                channels = [9] + [c for c, _, _ in CONV_LAYERS]
                self.convs = chainer.ChainList(
                    *[
                        ConvolutionNHWC(c_in, c_out, k, stride)
                        for c_in, (c_out, k, stride) in zip(channels, CONV_LAYERS)
                    ]
                )
                self.pixel = L.Linear(channels[-1] * out * out, width, nobias=True)
                self.side = side
            self.state = L.Linear(size if trunk == "dense" else self.base_size, width)
            self.action = L.Linear(action_size, width, nobias=True)
            self.hidden = L.Linear(width, width)
            self.out = L.Linear(width, len(horizons))

    @property
    def base_size(self) -> int:
        """The length of [z, motion, h], the features before the pixels."""
        return 3 * self.z_size + self.hidden_size

    @property
    def feature_size(self) -> int:
        return self.base_size + 3 * self.pixels

    def config(self) -> dict:
        return {
            "z_size": self.z_size,
            "hidden_size": self.hidden_size,
            "action_size": self.action_size,
            "width": self.width,
            "horizons": list(self.horizons),
            "pixels": self.pixels,
            "trunk": self.trunk,
        }

    def horizon_index(self, horizon: int) -> int:
        """The output column of `horizon` steps (`ValueError` if the head has none)."""
        if horizon not in self.horizons:
            raise ValueError(
                f"the look-ahead head forecasts {list(self.horizons)} steps ahead, not {horizon}"
            )
        return self.horizons.index(horizon)

    def set_normalization(self, mean, std) -> None:
        """Standardise inputs by these (std floored at 1e-3, so constant features stay
        finite, and pixels' at PIXEL_STD_FLOOR). A conv trunk's pixels are not
        standardised but scaled alike everywhere: the frames' colours as they are, the
        differences by DIFF_SCALE (mean 0, std 1 and 1 / DIFF_SCALE)."""
        xp = self.xp
        mean = np.array(mean, np.float32)
        std = np.array(std, np.float32)
        floor = np.full(self.feature_size, 1e-3, np.float32)
        floor[self.base_size :] = PIXEL_STD_FLOOR
        std = np.maximum(std, floor)
        if self.trunk == "conv":
            p = self.pixels
            mean[self.base_size :] = 0
            std[self.base_size : self.base_size + p] = 1
            std[self.base_size + p :] = 1 / DIFF_SCALE
        self.mean = xp.asarray(mean)
        self.std = xp.asarray(std)

    def _conv_state(self, x):
        """The conv trunk's state part for standardised features x (B, D), an array
        (a Variable on the way out)."""
        xp = backend.get_array_module(x)
        b, side = len(x), self.side
        # [p, p - p1, p1 - p2], each (side, side, 3) -> one (side, side, 9) image.
        image = x[:, self.base_size :].reshape(b, 3, side, side, 3).transpose(0, 2, 3, 1, 4)
        y = xp.ascontiguousarray(image.reshape(b, side, side, 9))
        for conv in self.convs:
            y = conv(y)
        return self.state(x[:, : self.base_size]) + self.pixel(F.reshape(y, (b, -1)))

    def forward(self, x, actions):
        """Logits (B, K, len(horizons)) for features x (B, D) and actions (B, K, A)."""
        b, k = actions.shape[:2]
        x = (x - self.mean) / self.std
        s = self._conv_state(x) if self.trunk == "conv" else self.state(x)
        a = F.reshape(self.action(F.reshape(actions, (b * k, -1))), (b, k, -1))
        y = F.relu(F.broadcast_to(s[:, None], a.shape) + a)
        y = F.relu(self.hidden(F.reshape(y, (b * k, -1))))
        return F.reshape(self.out(y), (b, k, len(self.horizons)))

    def risk(self, x, actions, horizon_index):
        """P(failure within horizons[horizon_index] steps), (B, K) float32, without a graph.

        x: (B, D) features, actions: (B, K, A), on the head's device.
        """
        xp = self.xp
        b, k = actions.shape[:2]
        # 2-D products throughout: NumPy's stacked (3-D) matmul does not reach BLAS.
        x = (x - self.mean) / self.std
        if self.trunk == "conv":
            with chainer.using_config("train", False), chainer.no_backprop_mode():
                s = self._conv_state(x).array
        else:
            s = x @ self.state.W.array.T + self.state.b.array
        a = actions.reshape(b * k, -1) @ self.action.W.array.T
        y = xp.maximum(a.reshape(b, k, -1) + s[:, None], 0).reshape(b * k, -1)
        y = xp.maximum(y @ self.hidden.W.array.T + self.hidden.b.array, 0)
        w, bias = self.out.W.array[horizon_index], self.out.b.array[horizon_index]
        logit = (y @ w + bias).reshape(b, k)
        return (0.5 + 0.5 * xp.tanh(0.5 * logit)).astype(np.float32)  # the sigmoid, overflow-free


class LookaheadEnsemble(chainer.ChainList):
    """`members` look-ahead heads of one config, trained apart (each its own initial
    weights and batch order: `07b_train_lookahead.py --heads`); the forecast is their mean
    probability. It answers what the planner and the trainer ask of a `LookaheadHead`
    (sizes, `horizons`, `horizon_index`, `risk`, `config`, `set_normalization`).
    """

    def __init__(self, members, **config):
        if int(members) != members or members < 2:
            raise ValueError(f"an ensemble needs 2 or more members, got {members}")
        super().__init__(*[LookaheadHead(**config) for _ in range(int(members))])

    # The members' shared sizes and horizons.
    z_size = property(lambda self: self[0].z_size)
    hidden_size = property(lambda self: self[0].hidden_size)
    action_size = property(lambda self: self[0].action_size)
    width = property(lambda self: self[0].width)
    horizons = property(lambda self: self[0].horizons)
    pixels = property(lambda self: self[0].pixels)
    trunk = property(lambda self: self[0].trunk)
    feature_size = property(lambda self: self[0].feature_size)

    def horizon_index(self, horizon: int) -> int:
        return self[0].horizon_index(horizon)

    def config(self) -> dict:
        return {**self[0].config(), "members": len(self)}

    def set_normalization(self, mean, std) -> None:
        for member in self:
            member.set_normalization(mean, std)

    def risk(self, x, actions, horizon_index):
        """The members' mean `LookaheadHead.risk`, (B, K) float32."""
        total = self[0].risk(x, actions, horizon_index)
        for member in self[1:]:
            total = total + member.risk(x, actions, horizon_index)
        return total / np.float32(len(self))


def make_head(members=1, **config):
    """A `LookaheadHead` (members 1) or a `LookaheadEnsemble` from a sidecar's config."""
    return LookaheadHead(**config) if members == 1 else LookaheadEnsemble(members, **config)


def members(head):
    """The heads whose forecasts `head` averages: itself, or an ensemble's members."""
    return list(head) if isinstance(head, LookaheadEnsemble) else [head]


def probabilities(head, x, actions):
    """(B, K, len(horizons)) forecast probabilities on the head's device, without a graph
    (an ensemble's: its members' mean). x: (B, D), actions: (B, K, A) arrays."""
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        parts = [F.sigmoid(m(x, actions)).array for m in members(head)]
    return sum(parts[1:], parts[0]) / np.float32(len(parts))


def moments(x, keep, chunk=8192, crops_rows=None):
    """Column means and standard deviations of the features (`row_features`) of the
    rows where `keep` (for `set_normalization`), in float64 over chunks: a float32 copy
    of a round's float16 rows would take 4 GB."""
    total, square, count = 0.0, 0.0, 0
    for i in range(0, len(x), chunk):
        c = None if crops_rows is None else crops_rows[i : i + chunk][keep[i : i + chunk]]
        part = np.asarray(row_features(x[i : i + chunk][keep[i : i + chunk]], c), np.float64)
        total += part.sum(axis=0)
        square += (part**2).sum(axis=0)
        count += len(part)
    if count == 0:
        size = x.shape[1] + (0 if crops_rows is None else crops_rows.shape[1] * crops_rows.shape[2])
        return np.zeros(size), np.zeros(size)
    mean = total / count
    return mean, np.sqrt(np.maximum(square / count - mean**2, 0.0))


def labels(fail, horizons=HORIZONS):
    """(N, K, len(horizons)) int32 targets from first-failure steps `fail` (N, K) (0: none)."""
    fail = np.asarray(fail)
    return np.stack([(fail > 0) & (fail <= k) for k in horizons], axis=-1).astype(np.int32)


def loss(head, x, actions, fail):
    """Mean sigmoid cross-entropy over rows, actions and horizons (a Chainer Variable)."""
    xp = head.xp
    target = xp.asarray(labels(fail, head.horizons))
    logits = head(xp.asarray(x, np.float32), xp.asarray(actions))
    return F.mean(F.sigmoid_cross_entropy(logits, target, reduce="no"))


def auc(score, positive):
    """Area under the ROC curve (ties broken by order), NaN without both classes."""
    score, positive = np.asarray(score, np.float64).ravel(), np.asarray(positive, bool).ravel()
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank = np.empty(len(score))
    rank[np.argsort(score, kind="stable")] = np.arange(len(score))
    return float((rank[positive].sum() - n_pos * (n_pos - 1) / 2) / (n_pos * n_neg))


def held_out_metrics(head, x, actions, fail, grid_size, batch=2048, crops_rows=None):
    """How well the head forecasts held-out rows (x and crops_rows as `row_features`).

    Returns a dict: `auc_<k>` per horizon over all (row, action) pairs, and
    `safe_pick`: over rows where some of the first `grid_size` actions fails
    within the longest horizon and some does not, the fraction where the action
    the head finds least risky does not (what the planner relies on).
    """
    probs = np.zeros((0,) + actions.shape[1:2] + (len(head.horizons),), np.float32)
    xp = head.xp
    parts = [
        probabilities(
            head,
            xp.asarray(row_features(x[i : i + batch], _part(crops_rows, i, batch))),
            xp.asarray(actions[i : i + batch]),
        )
        for i in range(0, len(x), batch)
    ]
    if parts:
        probs = np.concatenate([backend.CpuDevice().send(p) for p in parts])
    y = labels(fail, head.horizons)
    out = {f"auc_{k}": auc(probs[..., j], y[..., j]) for j, k in enumerate(head.horizons)}
    last = y[:, :grid_size, -1]
    mixed = (last.min(axis=1) == 0) & (last.max(axis=1) == 1)
    pick = np.argmin(probs[mixed, :grid_size, -1], axis=1)
    out["safe_pick"] = (
        float(1 - last[mixed][np.arange(len(pick)), pick].mean()) if mixed.any() else float("nan")
    )
    out["mixed_rows"] = int(mixed.sum())
    return out


def _part(rows, i, batch):
    return None if rows is None else rows[i : i + batch]
