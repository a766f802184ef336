"""Seeds derived from keys, so that results never depend on worker counts.

Rollout *i* of split *s* gets `derive_seed(seed, s, i)`; a CMA-ES trial gets
`derive_seed(seed, generation, j)`. The mapping goes through
`numpy.random.SeedSequence`, whose hashing makes neighbouring keys give unrelated
streams.
"""

import zlib

import numpy as np


def _key_to_int(key) -> int:
    if isinstance(key, str):
        # Stable across processes and Python runs (unlike hash()).
        return zlib.crc32(key.encode("utf-8"))
    key = int(key)
    if key < 0:
        raise ValueError(f"seed keys must be non-negative, got {key}")
    return key


def derive_seed(*keys) -> int:
    """Returns a 63-bit seed that depends only on `keys`.

    Args:
        *keys: non-negative ints or strings (for example `(seed, "train", 7)`).

    Returns:
        int in [0, 2**63).
    """
    entropy = [_key_to_int(k) for k in keys]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def derive_seeds(base: int, stream, count: int, start: int = 0) -> np.ndarray:
    """Seeds for items `start .. start+count-1` of a named stream.

    Args:
        base: the user's `--seed`.
        stream: a string or int naming the stream (for example the split).
        count: how many seeds.
        start: index of the first item.

    Returns:
        (count,) int64 array.
    """
    return np.array([derive_seed(base, stream, i) for i in range(start, start + count)], np.int64)
