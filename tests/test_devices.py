"""lib/devices.py: --gpu to a device, one-line errors when it cannot be had, and
`to_host`; every script that runs V or M refuses `--gpu 0` in one line without CuPy."""

import os
import subprocess
import sys
import types

import chainer
import numpy as np
import pytest
from cli_helpers import one_line_error, run, run_here

from lib import devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cupy_importable():
    try:
        import cupy  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def test_cpu_device_and_to_host():
    device = devices.select_device(-1)
    assert devices.on_cpu(device)
    x = np.arange(6, dtype=np.float32)
    assert devices.to_host(x) is x  # no copy on the host
    assert devices.to_host(chainer.Variable(x)) is x
    assert devices.to_host(None) is None
    assert isinstance(devices.to_host(np.float32(2.0)), np.ndarray)


def _fake_cupy(monkeypatch, count):
    runtime = types.SimpleNamespace()
    if isinstance(count, Exception):

        def get_count():
            raise count
    else:

        def get_count():
            return count

    runtime.getDeviceCount = get_count
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=runtime)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(chainer.backends.cuda, "available", True)


@pytest.mark.parametrize(
    "count, gpu, needle",
    [
        (0, 0, "CuPy sees no CUDA GPU"),
        (RuntimeError("cudaErrorNoDevice"), 0, "cudaErrorNoDevice"),
        (1, 1, "only 1 GPU(s) visible (ids 0-0)"),
    ],
)
def test_a_gpu_that_is_not_there_is_one_clear_line(monkeypatch, count, gpu, needle):
    _fake_cupy(monkeypatch, count)
    with pytest.raises(devices.DeviceUnavailable) as e:
        devices.select_device(gpu)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert "--gpu -1" in str(e.value)


def select_gpu0_in_child(fake_cupy: str) -> str:
    """The message of `select_device(0)` in a fresh interpreter where `sys.modules['cupy']`
    is `fake_cupy` (a Python expression), set before `lib` and Chainer load."""
    code = (
        f"import sys, types; sys.path.insert(0, {ROOT!r})\n"
        f"sys.modules['cupy'] = {fake_cupy}\n"
        "import lib, chainer\n"
        "from lib import devices\n"
        "try:\n"
        "    devices.select_device(0)\n"
        "except devices.DeviceUnavailable as e:\n"
        "    print(e)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.strip()


def test_without_cupy_the_error_says_what_to_install():
    out = select_gpu0_in_child("None")  # `import cupy` raises ImportError
    assert out.startswith("--gpu 0 needs CuPy, which is not installed")
    assert "requirements-cuda13.txt" in out and "requirements-cuda12.txt" in out


def test_a_cupy_chainer_cannot_use_is_one_clear_line():
    out = select_gpu0_in_child("types.ModuleType('cupy')")  # no cupy.cuda: Chainer gives up
    assert out.startswith("--gpu 0: Chainer cannot use CuPy here (ImportError")
    assert "\n" not in out


@pytest.mark.skipif(cupy_importable(), reason="CuPy is installed: --gpu 0 may work here")
@pytest.mark.parametrize(
    "script, args",
    [
        ("05_draw_vae_result.py", []),
        ("06_draw_rnn_result.py", []),
        ("07_train_controller.py", ["--epochs", "1"]),
        ("08_test_controller.py", ["--episodes", "2"]),
        ("benchmarks/bench_models.py", ["dream_b1024"]),
    ],
)
def test_gpu_without_cupy_is_one_line(tmp_path, script, args):
    where = [] if script.startswith("benchmarks") else ["--data-dir", tmp_path]
    proc = run(script, *args, "--gpu", "0", *where, check=False)
    line = one_line_error(proc)
    assert "needs CuPy" in line and "requirements-cuda" in line
    assert os.listdir(tmp_path) == []  # nothing written


def test_every_gpu_flag_has_help():
    for script in [f"0{i}_" for i in range(3, 9)]:
        name = next(f for f in os.listdir(ROOT) if f.startswith(script))
        out = run_here(name, "--help").stdout
        assert "--gpu GPU" in out and "CUDA GPU id" in out, name
    out = run_here("benchmarks/bench_models.py", "--help").stdout
    assert "--gpu GPU" in out
