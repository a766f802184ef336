"""Where the models run: `--gpu N` to a Chainer device, and the one way back to the host.

The CPU (`--gpu -1`) runs this project's own fast kernels; a GPU (`--gpu N`) runs
Chainer's and CuPy's ops on CuPy arrays. Code that mixes the two crosses at one
visible point: arrays go to the device with `device.send(x)` and come back with
`to_host(x)`, never through NumPy functions applied to CuPy arrays.

CuPy wheels by CUDA version (the NumPy 2 in requirements.txt suits both):
CUDA 12: `cupy-cuda12x` (CuPy 13 or 14); CUDA 13: `cupy-cuda13x` (CuPy 14, which has
no cuDNN bindings, so Chainer's convolutions run as im2col + cuBLAS).
"""

from __future__ import annotations

import chainer
import numpy as np

INSTALL_HINT = (
    "install the CuPy wheel for your CUDA: "
    "`.venv/bin/pip install -r requirements-cuda13.txt` (CUDA 13) or "
    "`-r requirements-cuda12.txt` (CUDA 12), or use --gpu -1 for the CPU"
)


class DeviceUnavailable(RuntimeError):
    """--gpu asked for a device this machine cannot provide."""


def select_device(gpu: int):
    """The Chainer device for `--gpu`: -1 the CPU (NumPy), N >= 0 CuPy's GPU N.

    Raises:
        DeviceUnavailable: CuPy is missing or broken, or GPU N is not visible;
            the message is one line that says what to install or choose.
    """
    if gpu < 0:
        return chainer.get_device("@numpy")
    try:
        import cupy  # here: optional (only --gpu needs it), and slow to import
    except ImportError:
        raise DeviceUnavailable(f"--gpu {gpu} needs CuPy, which is not installed: {INSTALL_HINT}")
    except Exception as e:  # noqa: BLE001 — a broken CuPy raises anything at import
        raise DeviceUnavailable(
            f"--gpu {gpu}: CuPy is installed but does not load ({type(e).__name__}: {e}); "
            f"{INSTALL_HINT}"
        ) from None
    if not chainer.backends.cuda.available:
        why = getattr(chainer.backends.cuda, "_resolution_error", None)
        raise DeviceUnavailable(
            f"--gpu {gpu}: Chainer cannot use CuPy here ({type(why).__name__}: {why}); {INSTALL_HINT}"
        )
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 — CUDARuntimeError without a driver, etc.
        count, why = 0, f" ({type(e).__name__}: {e})"
    else:
        why = ""
    if count == 0:
        raise DeviceUnavailable(
            f"--gpu {gpu}: CuPy sees no CUDA GPU{why}; check `nvidia-smi` and "
            "CUDA_VISIBLE_DEVICES, or use --gpu -1 for the CPU"
        )
    if gpu >= count:
        raise DeviceUnavailable(
            f"--gpu {gpu}: only {count} GPU(s) visible (ids 0-{count - 1}); "
            "choose one of those, or --gpu -1 for the CPU"
        )
    return chainer.get_device(f"@cupy:{gpu}")


def on_cpu(device) -> bool:
    """Whether `device` (a Chainer device) is the host."""
    return isinstance(device, chainer.backend.CpuDevice)


def to_host(x):
    """A NumPy array of `x` (a NumPy or CuPy array, a Variable, or None -> None)."""
    if x is None:
        return None
    if isinstance(x, chainer.Variable):
        x = x.array
    return np.asarray(chainer.backend.CpuDevice().send(x))
