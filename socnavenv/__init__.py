"""SocNavEnv on its own: a robot crossing a room of walking people to reach a goal.

    import gymnasium as gym
    import socnavenv  # registers SocNavEnv-v0

    env = gym.make("SocNavEnv-v0")  # or gym.make("socnavenv:SocNavEnv-v0") without the import
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

Needs only NumPy, numba and Gymnasium: importing it changes no process settings
(threads, allocator) and installs nothing into NumPy. The environment itself is in
`socnavenv.core` (its constants, kernels and the batched `SocNavSim` too); this package
re-exports the names a user needs. The World Models pipeline imports the same module
as `lib.env.socnavenv`.
"""

from socnavenv import core
from socnavenv.core import (
    COLLISION,
    OUT_OF_MAP,
    OUTCOMES,
    RUNNING,
    SUCCESS,
    TIMEOUT,
    EnvConfig,
    SocNavEnv,
    SocNavSim,
    SocNavVectorEnv,
    applied_actions,
    sample_initial_state,
)

__all__ = [
    "COLLISION",
    "OUTCOMES",
    "OUT_OF_MAP",
    "RUNNING",
    "SUCCESS",
    "TIMEOUT",
    "EnvConfig",
    "SocNavEnv",
    "SocNavSim",
    "SocNavVectorEnv",
    "applied_actions",
    "core",
    "sample_initial_state",
]
