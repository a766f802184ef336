"""V: the convolutional VAE of World Models (Ha & Schmidhuber 2018), in Chainer.

Paper sizes are the defaults: a 64x64x3 frame goes through four 4x4 stride-2
convolutions (32, 64, 128, 256 channels, relu) to a 2x2x256 = 1024 vector, then
to the mean and log-variance of a 32-d Gaussian. The decoder maps z through a
dense layer to 1024 values, seen as a 1x1 map, and four stride-2 transposed
convolutions (kernels 5, 5, 6, 6; 128, 64, 32, 3 channels; relu, then sigmoid
last) back to 64x64x3.

Everything is NHWC, like the frames on disk, so the fast CPU kernels of
`lib.kernels.fastconv` apply without transposes (Chainer's own convolution is used on
GPU). Frames enter as uint8 (B, 64, 64, 3); `ConvVAE.to_float` is the one place
they become float32 in [0, 1].

Typical use::

    vae = ConvVAE()                       # or ConvVAE(**json.load(sidecar))
    loss = VAELoss(vae, kl_tolerance=0.5, rng=np.random.default_rng(0))
    optimizer.setup(vae); optimizer.update(loss, frames_uint8)
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        mu, logvar = vae.encode(frames_uint8)
"""

import math

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np

from lib.devices import to_host
from lib.kernels.fast_encoder import make_encoder
from lib.kernels.fastconv import ConvolutionNHWC, DeconvolutionNHWC
from lib.models import ego_warp
from lib.models.task_head import task_loss

# Frames or latents per call when encoding or decoding many without a graph.
INFERENCE_BATCH = 500

PAPER_CONFIG = {
    "z_size": 32,
    "image_size": 64,
    "in_channels": 3,
    "enc_channels": [32, 64, 128, 256],
    "enc_kernel": 4,
    "dense_size": 1024,
    "dec_channels": [128, 64, 32],
    "dec_kernels": [5, 5, 6, 6],
}

_STRIDE = 2

# The keypoint encoder (`ConvVAE(keypoints=K)`): two convs to a 14x14 map of a 64x64
# frame, where each of K channels' spatial softmax gives one expected (x, y).
KEYPOINT_ENC_CHANNELS = (32, 64)
# The spatial-latent encoder (`ConvVAE(spatial=K)`): three convs to a 6x6 map of a 64x64
# frame, each cell's K latents linear in that cell's channels.
SPATIAL_ENC_CHANNELS = (32, 64, 128)
# Its map's side on a 64x64 frame -> the number of those convs (03 --map-side): three give
# 6x6 (cells 8 px apart), the first two 14x14 (4 px).
SPATIAL_MAP_LAYERS = {6: 3, 14: 2}


def decoder_output_size(dec_kernels, stride=_STRIDE):
    """Side of the decoder's output, starting from a 1x1 map.

    Args:
        dec_kernels: sequence of int kernel sizes.
        stride: int.

    Returns:
        int; 64 for the paper's (5, 5, 6, 6).
    """
    size = 1
    for k in dec_kernels:
        size = (size - 1) * stride + k
    return size


def encoder_output_size(image_size, n_layers, kernel, stride=_STRIDE):
    """Side of the encoder's last feature map; 2 for the paper's 64, 4 layers, 4."""
    size = image_size
    for _ in range(n_layers):
        size = (size - kernel) // stride + 1
    return size


class ConvVAE(chainer.Chain):
    """Convolutional VAE over NHWC frames.

    Args:
        z_size: int, latent size (32).
        image_size: int, frame side (64); must equal the decoder's output side.
        in_channels: int, colour channels (3).
        enc_channels: sequence of int, output channels of each encoder conv.
        enc_kernel: int, the encoder convs' kernel size (4, stride 2).
        dense_size: int, width of the decoder's dense layer, fed to the first
            deconv as a 1x1 map (1024).
        dec_channels: sequence of int, output channels of every deconv but the
            last (whose output has `in_channels`).
        dec_kernels: sequence of int, kernel size of each deconv (stride 2);
            one longer than `dec_channels`.
        keypoints: int; 0 (the paper) reads mu and log-variance from the last conv's
            flattened map. K > 0 makes a spatial-autoencoder encoder (Finn et al. 2016,
            "Deep Spatial Autoencoders for Visuomotor Learning"): a 1x1 conv maps the last
            conv's map to K channels, a softmax over each channel's positions turns it
            into an expected image position (x, y) in [-1, 1], and mu and log-variance
            are linear in those 2K coordinates. Where things are in the frame (the goal,
            the people) then reaches z linearly, which is what a linear C needs; use
            with fewer convs (`KEYPOINT_ENC_CHANNELS`) so the map keeps its resolution.
        spatial: int; 0 (the paper) as above. K > 0 makes z a map: mu and log-variance
            are a 1x1 conv of the last conv's S x S map to K channels, so z is S x S x K
            (row-major NHWC, flattened; `z_size` must be S * S * K), each cell's K
            latents linear in that cell's features. A linear C on z is then a weight
            per place and latent, as a linear C on pixels is a weight per pixel; use
            with fewer convs (`SPATIAL_ENC_CHANNELS`: 6 x 6 for 64 x 64 frames). The
            decoder is the paper's (a dense layer from z).
        task_size: int; 0 (the paper) has none. A > 0 adds `task`, a linear head from
            mu to A numbers that `VAELoss(task_weight=...)` trains to predict a teacher's
            action at the frame (01 `--labels`): a task signal beside reconstruction, so
            z keeps, linearly, what a linear C needs. Only the loss reads the head; the
            agent does not.

    Raises:
        ValueError: sizes that do not fit together.
    """

    def __init__(
        self,
        z_size=32,
        image_size=64,
        in_channels=3,
        enc_channels=(32, 64, 128, 256),
        enc_kernel=4,
        dense_size=1024,
        dec_channels=(128, 64, 32),
        dec_kernels=(5, 5, 6, 6),
        keypoints=0,
        spatial=0,
        task_size=0,
    ):
        super().__init__()
        enc_channels, dec_channels, dec_kernels = (
            [int(c) for c in enc_channels],
            [int(c) for c in dec_channels],
            [int(k) for k in dec_kernels],
        )
        if len(dec_kernels) != len(dec_channels) + 1:
            raise ValueError(
                f"need one more deconv kernel than dec_channels, got {dec_kernels} "
                f"and {dec_channels}"
            )
        if decoder_output_size(dec_kernels) != image_size:
            raise ValueError(
                f"deconv kernels {dec_kernels} give "
                f"{decoder_output_size(dec_kernels)}-pixel frames, not {image_size}"
            )
        side = encoder_output_size(image_size, len(enc_channels), enc_kernel)
        if side < 1:
            raise ValueError(f"{len(enc_channels)} convs shrink {image_size}-pixel frames to 0")
        self._config = {
            "z_size": int(z_size),
            "image_size": int(image_size),
            "in_channels": int(in_channels),
            "enc_channels": enc_channels,
            "enc_kernel": int(enc_kernel),
            "dense_size": int(dense_size),
            "dec_channels": dec_channels,
            "dec_kernels": dec_kernels,
        }
        self.keypoints = int(keypoints)
        if self.keypoints < 0:
            raise ValueError(f"keypoints must be >= 0, got {keypoints}")
        if self.keypoints:  # only then, so the paper V's sidecar is unchanged
            self._config["keypoints"] = self.keypoints
        self.spatial = int(spatial)
        if self.spatial < 0:
            raise ValueError(f"spatial must be >= 0, got {spatial}")
        if self.spatial and self.keypoints:
            raise ValueError("a V has keypoints or a spatial latent, not both")
        if self.spatial:
            if int(z_size) != side * side * self.spatial:
                raise ValueError(
                    f"a spatial latent of {self.spatial} per cell of the {side}x{side} map "
                    f"has z_size {side * side * self.spatial}, not {z_size}"
                )
            self._config["spatial"] = self.spatial
        self.task_size = int(task_size)
        if self.task_size < 0:
            raise ValueError(f"task_size must be >= 0, got {task_size}")
        if self.task_size:
            self._config["task_size"] = self.task_size
        self.z_size = int(z_size)
        self.image_size = int(image_size)
        self.in_channels = int(in_channels)
        self.dense_size = int(dense_size)
        flat = 2 * self.keypoints if self.keypoints else side * side * enc_channels[-1]
        if self.keypoints:
            # Each position's (x, y) in [-1, 1], row-major like the NHWC map.
            grid = (np.arange(side, dtype=np.float32) + 0.5) * np.float32(2.0 / side) - 1.0
            self._grid_x = np.tile(grid, side)
            self._grid_y = np.repeat(grid, side)
        with self.init_scope():
            self.enc = chainer.ChainList(
                *[
                    ConvolutionNHWC(c_in, c_out, enc_kernel, _STRIDE, "relu")
                    for c_in, c_out in zip([in_channels, *enc_channels[:-1]], enc_channels)
                ]
            )
            if self.keypoints:
                self.kp = L.Linear(enc_channels[-1], self.keypoints)  # the 1x1 conv
            head_in, head_out = (enc_channels[-1], self.spatial) if self.spatial else (flat, z_size)
            self.mu = L.Linear(head_in, head_out)  # with spatial: the 1x1 conv to K channels
            self.logvar = L.Linear(head_in, head_out)
            if self.task_size:
                self.task = L.Linear(z_size, self.task_size)
            self.dec_fc = L.Linear(z_size, dense_size)
            outs = [*dec_channels, in_channels]
            acts = ["relu"] * len(dec_channels) + ["sigmoid"]
            self.dec = chainer.ChainList(
                *[
                    DeconvolutionNHWC(c_in, c_out, k, _STRIDE, act)
                    for c_in, c_out, k, act in zip(
                        [dense_size, *dec_channels], outs, dec_kernels, acts
                    )
                ]
            )

    def config(self):
        """The constructor's arguments, JSON-ready: `ConvVAE(**vae.config())` rebuilds it."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self._config.items()}

    def to_float(self, x):
        """The one place frames become floats: uint8 [0, 255] -> float32 [0, 1].

        Args:
            x: (B, H, W, C) uint8 frames (NumPy or the model's device), or
                float32 frames already in [0, 1], which pass through.

        Returns:
            (B, H, W, C) float32 array on the model's device.
        """
        x = self.device.send(x)
        if x.dtype == np.uint8:
            return x.astype(np.float32) * np.float32(1.0 / 255.0)
        if x.dtype != np.float32:
            raise TypeError(f"frames must be uint8 or float32, got {x.dtype}")
        return x

    def encode(self, x):
        """Posterior of z given frames.

        Args:
            x: (B, H, W, C) uint8 frames (or float32 in [0, 1]).

        Returns:
            (mu, logvar): two (B, z_size) float32 Variables.
        """
        h = self.to_float(x)
        for conv in self.enc:
            h = conv(h)
        if self.spatial:
            b, side, _, c = h.shape
            cells = F.reshape(h, (b * side * side, c))
            flat = (b, side * side * self.spatial)
            return F.reshape(self.mu(cells), flat), F.reshape(self.logvar(cells), flat)
        if self.keypoints:
            h = self.keypoint_coordinates(h)
        else:
            h = F.reshape(h, (h.shape[0], -1))
        return self.mu(h), self.logvar(h)

    def latent_cell(self, d: int):
        """Where latent `d` of a spatial z lies: (row from the top, column, latent in
        the cell) of the encoder's map; None when z is not spatial."""
        if not self.spatial:
            return None
        cell, k = divmod(int(d), self.spatial)
        side = math.isqrt(self.z_size // self.spatial)
        return cell // side, cell % side, k

    def map_offsets(self, view_size: float):
        """(S,) float64: the ego coordinate (m) of each row (forward) and column (left)
        of a spatial z's S x S map, the middle of each cell's receptive field in a view
        of `view_size` metres (`lib.models.ego_warp`); None when z is not spatial."""
        if not self.spatial:
            return None
        kernel = self._config["enc_kernel"]
        centres = ego_warp.conv_centres(self.image_size, len(self.enc), kernel, _STRIDE)
        return ego_warp.grid_offsets(len(centres), view_size, self.image_size, centres)

    def keypoint_coordinates(self, h):
        """(B, 2K) expected (x..., y...) positions of the K keypoint channels of the
        last conv's (B, S, S, C) map (x right, y down, both in [-1, 1])."""
        b, side, _, c = h.shape
        logits = F.reshape(self.kp(F.reshape(h, (b * side * side, c))), (b, side * side, -1))
        p = F.softmax(logits, axis=1)  # (B, S*S, K): where each keypoint is
        xy = []
        for g in (self._grid_x, self._grid_y):
            g = self.xp.broadcast_to(self.device.send(g)[None, :, None], p.shape)
            xy.append(F.sum(p * g, axis=1))
        return F.concat(xy, axis=1)

    def sample(self, mu, logvar, rng=None):
        """Draws z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (reparameterised).

        Args:
            mu: (B, z_size) float32 Variable or array.
            logvar: (B, z_size) float32 Variable or array.
            rng: `numpy.random.Generator` for eps (drawn on the host, so runs
                repeat on any device); a fresh unseeded one if None.

        Returns:
            (B, z_size) float32 Variable.
        """
        rng = np.random.default_rng() if rng is None else rng
        eps = rng.standard_normal(mu.shape, dtype=np.float32)
        return mu + F.exp(0.5 * logvar) * self.device.send(eps)

    def decode(self, z):
        """Frames from latents.

        Args:
            z: (B, z_size) float32 Variable or array.

        Returns:
            (B, H, W, C) float32 Variable in [0, 1].
        """
        h = F.reshape(self.dec_fc(z), (z.shape[0], 1, 1, self.dense_size))
        for deconv in self.dec:
            h = deconv(h)
        return h

    def forward(self, x, rng=None):
        """Encode, sample, decode.

        Args:
            x: (B, H, W, C) uint8 frames (or float32 in [0, 1]).
            rng: `numpy.random.Generator` for the sampling noise.

        Returns:
            (reconstruction (B, H, W, C), mu (B, z), logvar (B, z)), float32 Variables.
        """
        mu, logvar = self.encode(x)
        return self.decode(self.sample(mu, logvar, rng)), mu, logvar


def kl_divergence(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) per frame.

    Args:
        mu: (B, z) float Variable or array.
        logvar: (B, z) float Variable or array.

    Returns:
        (B,) Variable: -0.5 * sum(1 + logvar - mu^2 - exp(logvar)) over z.
    """
    return -0.5 * F.sum(1.0 + logvar - mu * mu - F.exp(logvar), axis=1)


def floored_kl(mu, logvar, kl_tolerance):
    """The paper's KL term: max(KL, kl_tolerance * z) per frame.

    Below the floor the KL has no gradient, so the encoder keeps about
    `kl_tolerance` nats per latent dimension for the reconstruction.

    Args:
        mu: (B, z) float Variable or array.
        logvar: (B, z) float Variable or array.
        kl_tolerance: float, nats per latent dimension (0.5 in the paper).

    Returns:
        (B,) Variable.
    """
    return _floor(kl_divergence(mu, logvar), kl_tolerance * mu.shape[1])


def _floor(kl, value):
    return F.maximum(kl, kl.xp.full(kl.shape, value, dtype=kl.dtype))


def object_weights(target, object_weight):
    """Per-pixel weights that make small coloured objects count.

    In SocNavEnv's frames the floor, wall and outside are grey while the goal,
    the people and the robot are saturated colours, but they cover a few dozen
    of 4096 pixels; with a plain squared error a VAE learns the room's outline
    long before it draws them. The weight is `1 + (object_weight - 1) * s`,
    where `s` is the pixel's saturation, max(rgb) - min(rgb) in [0, 1].

    Args:
        target: (B, H, W, 3) float32 frames in [0, 1] (array, not Variable).
        object_weight: weight of a fully saturated pixel.

    Returns:
        (B, H, W, 1) float32 array.
    """
    sat = target.max(axis=-1, keepdims=True) - target.min(axis=-1, keepdims=True)
    return (1.0 + (object_weight - 1.0) * sat).astype(np.float32)


# How green a goal pixel is: its green minus the larger of red and blue, in [0, 1], at
# which `goal_weights` gives the full weight (the goal's colour scores (190 - 60) / 255).
GOAL_GREENNESS = (190.0 - 60.0) / 255.0


def goal_weights(target, goal_weight):
    """Per-pixel factors that make the goal count more than other objects.

    The goal is the only green thing in a frame; a pixel's greenness is
    `max(0, g - max(r, b)) / GOAL_GREENNESS`, capped at 1, and its factor is
    `1 + (goal_weight - 1) * greenness`: `goal_weight` on the goal, 1 elsewhere.

    Args:
        target: (B, H, W, 3) float32 frames in [0, 1] (array, not Variable).
        goal_weight: factor on a goal pixel.

    Returns:
        (B, H, W, 1) float32 array.
    """
    xp = chainer.backend.get_array_module(target)
    green = target[..., 1:2] - xp.maximum(target[..., 0:1], target[..., 2:3])
    greenness = xp.clip(green / GOAL_GREENNESS, 0.0, 1.0)
    return (1.0 + (goal_weight - 1.0) * greenness).astype(np.float32)


class VAELoss(chainer.Chain):
    """The VAE's training loss: reconstruction + floored KL, means over the batch.

    Reports, through `chainer.reporter`: `loss`, `rec` (summed squared error
    per frame), `kl` (the floored KL that is optimised) and `kl_raw` (the KL
    before the floor), each a mean over the batch.

    Args:
        vae: a `ConvVAE`.
        kl_tolerance: float, nats per latent dimension below which the KL is
            not pushed down (0.5).
        rng: `numpy.random.Generator` for the sampling noise; save its
            `bit_generator.state` with a snapshot to resume exactly.
        object_weight: float, weight of the squared error on coloured pixels
            relative to grey ones (see `object_weights`); 1 is the paper's
            plain summed squared error. `rec` is always reported unweighted.
        goal_weight: float, a further factor on the goal's pixels (see `goal_weights`);
            1 (default) weighs the goal like the other objects.
        task_weight: float; > 0 adds `task_weight` times the task loss (see
            `lib.models.task_head`; V needs a `task` head), reported as `task`; 0 (default, the
            paper) has none.
    """

    def __init__(
        self, vae, kl_tolerance=0.5, rng=None, object_weight=1.0, goal_weight=1.0, task_weight=0.0
    ):
        super().__init__()
        self.task_weight = float(task_weight)
        if self.task_weight < 0:
            raise ValueError(f"task_weight must be >= 0, got {task_weight}")
        if self.task_weight and not getattr(vae, "task_size", 0):
            raise ValueError("a task weight needs a V with a task head (ConvVAE(task_size=A))")
        self.kl_tolerance = float(kl_tolerance)
        self.object_weight = float(object_weight)
        self.goal_weight = float(goal_weight)
        self.rng = np.random.default_rng() if rng is None else rng
        with self.init_scope():
            self.vae = vae

    def forward(self, x, labels=None):
        """Loss of a batch.

        Args:
            x: (B, H, W, C) uint8 frames.
            labels: (B, A) teacher actions at the frames (NaN rows: none), needed with
                a task weight.

        Returns:
            Scalar float32 Variable.
        """
        target = self.vae.to_float(x)
        y, mu, logvar = self.vae(target, self.rng)
        err = F.squared_difference(y, target)
        rec = F.sum(err) / x.shape[0]
        kl_raw = kl_divergence(mu, logvar)
        kl = F.mean(_floor(kl_raw, self.kl_tolerance * mu.shape[1]))
        if self.object_weight != 1.0 or self.goal_weight != 1.0:
            weights = object_weights(target, self.object_weight)
            if self.goal_weight != 1.0:
                weights = weights * goal_weights(target, self.goal_weight)
            weights = self.xp.ascontiguousarray(self.xp.broadcast_to(weights, target.shape))
            loss = F.sum(err * weights) / x.shape[0] + kl
        else:
            loss = rec + kl
        report = {"loss": loss, "rec": rec, "kl": kl, "kl_raw": F.mean(kl_raw)}
        if self.task_weight:
            if labels is None:
                raise ValueError("a task weight needs the frames' teacher labels")
            report["task"] = task_loss(self.vae.task(mu), labels)
            loss = loss + self.task_weight * report["task"]
            report["loss"] = loss
        chainer.reporter.report(report, self)
        return loss


def encode_frames(vae, frames: np.ndarray, batch_size: int = INFERENCE_BATCH, encoder=None):
    """Posterior means and log-variances of uint8 frames, without a graph
    (through `lib.kernels.fast_encoder` on the CPU).

    Args:
        frames: (N, S, S, 3) uint8.
        encoder: `make_encoder(vae)`, to reuse one over many
            calls (building it copies and transforms V's weights).

    Returns:
        (mu, logvar), each (N, z) float32 NumPy arrays.
    """
    encoder = make_encoder(vae) if encoder is None else encoder
    mus, logvars = [], []
    for start in range(0, len(frames), batch_size):
        mu, logvar = encoder(frames[start : start + batch_size])
        mus.append(to_host(mu))
        logvars.append(to_host(logvar))
    return np.concatenate(mus), np.concatenate(logvars)


def decode_latents(vae, z, batch_size: int = INFERENCE_BATCH) -> np.ndarray:
    """uint8 frames (N, S, S, 3) on the host, decoded from (N, z) float32 latents
    (NumPy, or CuPy on V's device)."""
    out = []
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        for start in range(0, len(z), batch_size):
            batch = vae.device.send(z[start : start + batch_size]).astype(np.float32, copy=False)
            y = to_host(vae.decode(batch))
            out.append((np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    return np.concatenate(out)
