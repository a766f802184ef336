"""Loading trained models with the checks a later step needs.

Each model is a Chainer `save_npz` file with a JSON sidecar of the sizes it was
built with; loaders rebuild the model from the sidecar (sizes are never
hard-coded) and turn every way this can go wrong into a `CheckpointError`
whose message is one line naming the file and the script that makes it.
"""

from __future__ import annotations

import json
import os

import chainer
import numpy as np

from lib.devices import to_host


class CheckpointError(ValueError):
    """A model file is missing, unreadable or of the wrong size."""


def read_sidecar(model_path: str, maker: str) -> dict:
    """The JSON sidecar of `model_path`; `maker` is the script that writes it."""
    if not os.path.exists(model_path):
        raise CheckpointError(f"{model_path} not found — run {maker} first")
    sidecar = os.path.splitext(model_path)[0] + ".json"
    try:
        with open(sidecar) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{sidecar} is missing or unreadable ({type(e).__name__}) — re-run {maker}"
        ) from None
    if not isinstance(data, dict) or "config" not in data:
        raise CheckpointError(f"{sidecar} has no 'config' — re-run {maker}")
    return data


def load_weights(model_path: str, model, maker: str) -> None:
    try:
        chainer.serializers.load_npz(model_path, model)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"{model_path} does not match its sidecar ({type(e).__name__}: {e}) — re-run {maker}"
        ) from None


def load_vae(data_dir: str, device=None):
    """V from `data_dir/models/vae.npz` and its sidecar.

    Returns:
        (ConvVAE on `device`, sidecar dict).
    """
    from lib.vae import ConvVAE

    path = os.path.join(data_dir, "models", "vae.npz")
    sidecar = read_sidecar(path, "03_train_vae.py")
    try:
        vae = ConvVAE(**sidecar["config"])
    except TypeError as e:
        raise CheckpointError(f"{path}: sidecar config does not build a ConvVAE ({e})") from None
    load_weights(path, vae, "03_train_vae.py")
    if device is not None:
        vae.to_device(device)
    return vae, sidecar


def encode_frames(vae, frames: np.ndarray, batch_size: int = 500, encoder=None):
    """Posterior means and log-variances of uint8 frames, without a graph
    (through `lib.fast_encoder` on the CPU).

    Args:
        frames: (N, S, S, 3) uint8.
        encoder: `lib.fast_encoder.make_encoder(vae)`, to reuse one over many
            calls (building it copies and transforms V's weights: ~20 ms).

    Returns:
        (mu, logvar), each (N, z) float32 NumPy arrays.
    """
    from lib.fast_encoder import make_encoder

    encoder = make_encoder(vae) if encoder is None else encoder
    mus, logvars = [], []
    for start in range(0, len(frames), batch_size):
        mu, logvar = encoder(frames[start : start + batch_size])
        mus.append(to_host(mu))
        logvars.append(to_host(logvar))
    return np.concatenate(mus), np.concatenate(logvars)


def decode_latents(vae, z, batch_size: int = 500) -> np.ndarray:
    """uint8 frames (N, S, S, 3) on the host, decoded from (N, z) float32 latents
    (NumPy, or CuPy on V's device)."""
    out = []
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        for start in range(0, len(z), batch_size):
            batch = vae.device.send(z[start : start + batch_size]).astype(np.float32, copy=False)
            y = to_host(vae.decode(batch))
            out.append((np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    return np.concatenate(out)


def load_rnn(data_dir: str, mode: str, z_size: int | None = None, device=None):
    """M from `data_dir/models/rnn_<mode>.npz`, checked against V's z size.

    Returns:
        (MDNRNN on `device`, sidecar dict).
    """
    from lib.mdn_rnn import MDNRNN

    maker = f"04_train_rnn.py --mode {mode}"
    path = os.path.join(data_dir, "models", f"rnn_{mode}.npz")
    sidecar = read_sidecar(path, maker)
    if z_size is not None and sidecar["config"].get("z_size") != z_size:
        raise CheckpointError(
            f"{path} predicts z of size {sidecar['config'].get('z_size')} but V's is {z_size} — "
            f"re-run {maker} with this V"
        )
    try:
        model = MDNRNN(**sidecar["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: sidecar config does not build an MDNRNN ({e})") from None
    load_weights(path, model, maker)
    if device is not None:
        model.to_device(device)
    return model, sidecar


def load_controller(data_dir: str):
    """C from `data_dir/models/controller.npz`.

    Returns:
        (Controller, sidecar dict); the sidecar names the M it was trained with.
    """
    from lib.controller import Controller

    path = os.path.join(data_dir, "models", "controller.npz")
    sidecar = read_sidecar(path, "07_train_controller.py")
    try:
        controller = Controller(**sidecar["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: sidecar config does not build a Controller ({e})") from None
    load_weights(path, controller, "07_train_controller.py")
    return controller, sidecar
