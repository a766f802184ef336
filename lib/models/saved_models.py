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

from lib.env.socnavenv import EnvConfig
from lib.fileio import file_hash
from lib.models.controller import Controller
from lib.models.lookahead_heads import make_head
from lib.models.map_rnn import build_rnn
from lib.models.pixel_mover import PixelMover
from lib.models.vae import ConvVAE


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


def observation_settings(vae_sidecar: dict) -> dict:
    """How the frames V was trained on were drawn: {"image_size", "view_size"} from its
    data's manifest (03 copies it into the sidecar), or today's defaults for a V whose
    sidecar predates them. The agent must see frames drawn the same way."""
    env = ((vae_sidecar.get("data") or {}).get("identity") or {}).get("env") or {}
    return {k: env.get(k, getattr(EnvConfig, k)) for k in ("image_size", "view_size")}


def done_pos_weight(rnn_sidecar: dict) -> float:
    """The positive-class weight M's done head was trained with (04 records it), to
    calibrate its logit (`mdn_rnn.calibrated_done_logit`); 1 when not recorded, as
    for an outcome-head M, whose probabilities are calibrated already."""
    return float(rnn_sidecar.get("done_pos_weight") or 1.0)


def z_source(rnn_sidecar: dict) -> str:
    """What M was trained on (04 --z-source): "sample" (V's posterior draws, the paper;
    also M's made before the flag) or "mean" (V's means). Its dreams start from a real
    first frame's z drawn the same way."""
    return rnn_sidecar.get("z_source", "sample")


def load_vae(data_dir: str, device=None):
    """V from `data_dir/models/vae.npz` and its sidecar.

    Returns:
        (ConvVAE on `device`, sidecar dict).
    """

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


def load_rnn(data_dir: str, mode: str, z_size: int | None = None, device=None):
    """M from `data_dir/models/rnn_<mode>.npz`, checked against V's z size.

    Returns:
        (M on `device`: an `MDNRNN`, or a `MapRNN` when its sidecar says "arch": "map";
        sidecar dict).
    """

    maker = f"04_train_rnn.py --mode {mode}"
    path = os.path.join(data_dir, "models", f"rnn_{mode}.npz")
    sidecar = read_sidecar(path, maker)
    if z_size is not None and sidecar["config"].get("z_size") != z_size:
        raise CheckpointError(
            f"{path} predicts z of size {sidecar['config'].get('z_size')} but V's is {z_size} — "
            f"re-run {maker} with this V"
        )
    try:
        model = build_rnn(sidecar["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: sidecar config does not build an M ({e})") from None
    load_weights(path, model, maker)
    if device is not None:
        model.to_device(device)
    return model, sidecar


def load_mover(data_dir: str, device=None):
    """The pixel mover from `data_dir/models/mover.npz` (04b), or None if there is none.

    Raises:
        CheckpointError: the file or its sidecar cannot be read.
    """
    path = os.path.join(data_dir, "models", "mover.npz")
    if not os.path.exists(path):
        return None
    maker = "04b_train_mover.py"
    sidecar = read_sidecar(path, maker)
    try:
        mover = PixelMover(**sidecar["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: sidecar config does not build a mover ({e})") from None
    load_weights(path, mover, maker)
    if device is not None:
        mover.to_device(device)
    return mover


def mover_for(data_dir: str, image_size: int, needed_by: str):
    """04b's mover, which `needed_by` (a flag, for the message) needs, for V's frames of
    `image_size` pixels.

    Raises:
        CheckpointError: there is none, it cannot be read, or it moves frames of
            another size.
    """
    models = os.path.join(data_dir, "models")
    mover = load_mover(data_dir)
    if mover is None:
        raise CheckpointError(
            f"{needed_by} needs {models}/mover.npz — run 04b_train_mover.py first"
        )
    if mover.image_size != image_size:
        raise CheckpointError(
            f"{models}/mover.npz moves {mover.image_size}-pixel frames, V reads "
            f"{image_size}-pixel ones — rerun 04b_train_mover.py on this data"
        )
    return mover


def load_controller(data_dir: str, name: str = "controller"):
    """C from `data_dir/models/<name>.npz` (07's `--name`).

    Returns:
        (Controller, sidecar dict); the sidecar names the M it was trained with.
    """

    path = os.path.join(data_dir, "models", f"{name}.npz")
    sidecar = read_sidecar(path, "07_train_controller.py")
    try:
        controller = Controller(**sidecar["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: sidecar config does not build a Controller ({e})") from None
    load_weights(path, controller, "07_train_controller.py")
    return controller, sidecar


def model_hashes(data_dir: str, rnn_mode: str) -> dict:
    """{"vae": hash, "rnn": hash} of V's and M's weight files (`fileio.file_hash`): what
    07 records in C's sidecar, and what `trained_with_these` compares."""
    return {k: file_hash(os.path.join(data_dir, f)) for k, f in _model_files(rnn_mode).items()}


def _model_files(rnn_mode: str) -> dict:
    return {
        "vae": os.path.join("models", "vae.npz"),
        "rnn": os.path.join("models", f"rnn_{rnn_mode}.npz"),
    }


def trained_with_these(data_dir: str, c_sidecar: dict) -> str | None:
    """None if C was trained with the V and M now in `data_dir` (or its sidecar predates
    the record); else which of them changed since, in words."""
    recorded = c_sidecar.get("trained_with")
    if not recorded:
        return None
    mode = c_sidecar["rnn_mode"]
    now = model_hashes(data_dir, mode)
    changed = [f for k, f in _model_files(mode).items() if recorded.get(k) != now[k]]
    return " and ".join(changed) or None


def load_agent(data_dir: str, controller_name: str = "controller", device=None):
    """C (`models/<controller_name>.npz`), V and the M that C was trained with, checked
    to fit together: what 08 tests and 07b_train_lookahead.py plays.

    Returns:
        (controller, its sidecar, V, V's sidecar, M, M's sidecar); V and M on `device`.

    Raises:
        CheckpointError: a model is missing or unreadable, or C reads another [z, h].
    """
    controller, c_sidecar = load_controller(data_dir, controller_name)
    vae, v_sidecar = load_vae(data_dir, device)
    rnn, r_sidecar = load_rnn(
        data_dir, c_sidecar["rnn_mode"], v_sidecar["config"]["z_size"], device
    )
    if (rnn.z_size, rnn.hidden_size) != (controller.z_size, controller.hidden_size):
        raise CheckpointError(
            f"{controller_name}.npz reads [z, h] of sizes ({controller.z_size}, "
            f"{controller.hidden_size}) but V+M give ({rnn.z_size}, {rnn.hidden_size}) — "
            "re-run 07_train_controller.py"
        )
    changed = trained_with_these(data_dir, c_sidecar)
    if changed:
        raise CheckpointError(
            f"{controller_name}.npz was trained with another V or M ({changed} changed "
            "since): it would read a [z, h] it never saw — re-run 07_train_controller.py"
        )
    return controller, c_sidecar, vae, v_sidecar, rnn, r_sidecar


def load_lookahead(data_dir: str, rnn, device=None):
    """M's look-ahead head from `data_dir/models/lookahead.npz`, checked against M's sizes.

    Returns:
        (LookaheadHead, or LookaheadEnsemble, on `device`; sidecar dict).
    """
    maker = "07b_train_lookahead.py"
    path = os.path.join(data_dir, "models", "lookahead.npz")
    sidecar = read_sidecar(path, maker)
    try:
        head = make_head(**sidecar["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: sidecar config does not build a look-ahead head ({e})"
        ) from None
    if (head.z_size, head.hidden_size) != (rnn.z_size, rnn.hidden_size):
        raise CheckpointError(
            f"{path} reads z {head.z_size} and h {head.hidden_size}, but V and M give "
            f"{rnn.z_size} and {rnn.hidden_size} — re-run {maker}"
        )
    load_weights(path, head, maker)
    if device is not None:
        head.to_device(device)
    return head, sidecar
