"""The environment stands alone: `socnavenv` imports with only NumPy, numba and Gymnasium,
sets no process settings, passes `check_env`, and gives the pipeline's observations byte
for byte; `lib.env.socnavenv` is the same module object, not a copy."""

import ast
import json
import os
import subprocess
import sys
import textwrap

import gymnasium
import numpy as np
import pytest

import socnavenv
from lib.env import socnavenv as sn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALLOWED = {"numpy", "numba", "gymnasium", "socnavenv"}
# What the pipeline has installed beyond NumPy, numba, llvmlite, Gymnasium and their own
# dependencies (cloudpickle, typing_extensions, farama_notifications).
BLOCKED = [
    "lib",
    "chainer",
    "threadpoolctl",
    "scipy",
    "matplotlib",
    "cupy",
    "torch",
    "ray",
    "PIL",
    "imageio",
    "tqdm",
    "cma",
    "pytest",
]
RUNTIME_VARIABLES = ["OMP_WAIT_POLICY", "NUMBA_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT"]
SEED, STEPS = 11, 40

# Runs from the repository root in a fresh interpreter, started without runtime.py's
# variables, with everything outside NumPy, numba and Gymnasium made unimportable first.
CHILD = textwrap.dedent(
    """
    import sys

    # argv: blocked packages, runtime.py's variables, output .npz, seed, steps.
    BLOCKED = set(sys.argv[1].split(","))


    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None


    sys.meta_path.insert(0, Blocker())

    import json
    import os

    import gymnasium as gym
    import numpy as np
    from gymnasium.utils.env_checker import check_env

    import socnavenv

    for obs_type in ("image", "vector"):
        check_env(gym.make("SocNavEnv-v0", obs_type=obs_type, render_mode="rgb_array").unwrapped)
    rollouts = {}
    for obs_type in ("image", "vector"):
        env = gym.make("SocNavEnv-v0", obs_type=obs_type)
        obs, _ = env.reset(seed=int(sys.argv[4]))
        frames, rewards = [obs], []
        actions = np.random.default_rng(0).uniform(-1, 1, (int(sys.argv[5]), 2))
        for action in actions.astype(np.float32):
            obs, reward, terminated, truncated, _ = env.step(action)
            frames.append(obs)
            rewards.append(reward)
            if terminated or truncated:
                obs, _ = env.reset()
        rollouts[obs_type] = np.stack(frames)
        rollouts[obs_type + "_rewards"] = np.asarray(rewards, np.float64)
    np.savez(sys.argv[3], **rollouts)
    print(json.dumps({
        "imported": sorted({m.partition(".")[0] for m in sys.modules} & BLOCKED),
        "variables": sorted(set(sys.argv[2].split(",")) & set(os.environ)),
        "module": socnavenv.SocNavEnv.__module__,
    }))
    """
)


def _rollout(env_module, obs_type):
    """The child's episode, through `env_module` in this process."""
    env = gymnasium.make("SocNavEnv-v0", obs_type=obs_type)
    assert isinstance(env.unwrapped, env_module.SocNavEnv)
    obs, _ = env.reset(seed=SEED)
    frames, rewards = [obs], []
    for action in np.random.default_rng(0).uniform(-1, 1, (STEPS, 2)).astype(np.float32):
        obs, reward, terminated, truncated, _ = env.step(action)
        frames.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            obs, _ = env.reset()
    return np.stack(frames), np.asarray(rewards, np.float64)


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    """Runs CHILD once: (its JSON report, its rollouts)."""
    out = tmp_path_factory.mktemp("standalone") / "rollouts.npz"
    environ = {k: v for k, v in os.environ.items() if k not in RUNTIME_VARIABLES}
    environ.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(BLOCKED), ",".join(RUNTIME_VARIABLES), str(out)]
        + [str(SEED), str(STEPS)],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with np.load(out) as rollouts:
        return json.loads(proc.stdout.strip().splitlines()[-1]), dict(rollouts)


def test_imports_only_numpy_numba_gymnasium_and_the_stdlib():
    folder = os.path.join(ROOT, "socnavenv")
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(folder, name)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.partition(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops = [node.module.partition(".")[0]]
            else:
                continue
            for top in tops:
                assert top in ALLOWED or top in sys.stdlib_module_names, (
                    f"socnavenv/{name} imports {top}"
                )


def test_checks_and_steps_without_the_pipeline_or_its_settings(standalone):
    report, rollouts = standalone
    assert report["imported"] == []  # lib, Chainer, threadpoolctl, ...: never imported
    assert report["variables"] == []  # none of lib/kernels/runtime.py's settings
    assert report["module"] == "socnavenv.core"
    assert rollouts["image"].shape == (STEPS + 1, 64, 64, 3)
    assert rollouts["vector"].shape == (STEPS + 1, 31)


@pytest.mark.parametrize("obs_type", ["image", "vector"])
def test_standalone_observations_equal_the_pipelines_byte_for_byte(standalone, obs_type):
    _, rollouts = standalone
    frames, rewards = _rollout(sn, obs_type)
    assert frames.dtype == rollouts[obs_type].dtype
    assert frames.shape == rollouts[obs_type].shape
    assert frames.tobytes() == rollouts[obs_type].tobytes()
    assert rewards.tobytes() == rollouts[obs_type + "_rewards"].tobytes()


def test_the_pipelines_name_is_the_same_module():
    # One module object: one simulator, one numba cache, one registration, and
    # monkeypatching `sn` patches what `socnavenv` runs.
    assert sn is socnavenv.core
    assert socnavenv.SocNavEnv is sn.SocNavEnv and socnavenv.EnvConfig is sn.EnvConfig
    assert gymnasium.registry["SocNavEnv-v0"].entry_point is sn.SocNavEnv
    assert sn._step_kernel is socnavenv.core._step_kernel


def test_make_imports_the_package_itself():
    env = gymnasium.make("socnavenv:SocNavEnv-v0", obs_type="vector")
    assert isinstance(env.unwrapped, socnavenv.SocNavEnv)
