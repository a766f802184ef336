"""C: the linear controller of World Models, a = tanh(W [z, h] + b).

At paper sizes (z 32, h 256, 2 actions) it has (32 + 256) * 2 + 2 = 578
parameters, read and written as one flat vector `[W.ravel(), b]` (W is
(actions, z + h), row-major), which is what CMA-ES searches over.

`Controller` is the Chainer link (for saving, loading and the GPU);
`act_batch` is the batched form CMA-ES uses: P candidate parameter vectors,
each agent reading its own row, in one product.
"""

from __future__ import annotations

import chainer
import numpy as np


def n_params(z_size: int, hidden_size: int, action_size: int = 2) -> int:
    """Length of the flat parameter vector."""
    return (z_size + hidden_size) * action_size + action_size


class Controller(chainer.Chain):
    """a = tanh(W [z, h] + b).

    Args:
        z_size: latent size (32).
        hidden_size: M's LSTM size (256); 0 gives a z-only controller.
        action_size: actions (2).
    """

    def __init__(self, z_size: int = 32, hidden_size: int = 256, action_size: int = 2):
        super().__init__()
        self.z_size = int(z_size)
        self.hidden_size = int(hidden_size)
        self.action_size = int(action_size)
        with self.init_scope():
            self.W = chainer.Parameter(np.zeros((action_size, z_size + hidden_size), np.float32))
            self.b = chainer.Parameter(np.zeros(action_size, np.float32))

    def config(self) -> dict:
        return {
            "z_size": self.z_size,
            "hidden_size": self.hidden_size,
            "action_size": self.action_size,
        }

    @property
    def size(self) -> int:
        return n_params(self.z_size, self.hidden_size, self.action_size)

    def get_flat(self) -> np.ndarray:
        """(n_params,) float32 copy of `[W.ravel(), b]`."""
        cpu = chainer.backend.CpuDevice()
        return np.concatenate([cpu.send(self.W.array).ravel(), cpu.send(self.b.array)])

    def set_flat(self, flat: np.ndarray) -> None:
        """Loads a (n_params,) vector (any float dtype)."""
        flat = np.asarray(flat, np.float32)
        if flat.shape != (self.size,):
            raise ValueError(f"expected {self.size} parameters, got shape {flat.shape}")
        k = self.W.size
        self.W.array[...] = self.xp.asarray(flat[:k].reshape(self.W.shape))
        self.b.array[...] = self.xp.asarray(flat[k:])

    def forward(self, z, h):
        """Actions for a batch.

        Args:
            z: (B, z_size) float32; h: (B, hidden_size) float32.

        Returns:
            (B, action_size) float32 Variable in [-1, 1].
        """
        x = chainer.functions.concat([z, h], axis=1) if self.hidden_size else z
        return chainer.functions.tanh(chainer.functions.linear(x, self.W, self.b))


def unflatten(params: np.ndarray, z_size: int, hidden_size: int, action_size: int = 2):
    """Splits (P, n_params) flat vectors into W (P, A, D) and b (P, A) views."""
    params = np.asarray(params, np.float32)
    d = z_size + hidden_size
    k = action_size * d
    if params.shape[-1] != k + action_size:
        raise ValueError(f"expected {k + action_size} parameters, got {params.shape[-1]}")
    return params[..., :k].reshape(*params.shape[:-1], action_size, d), params[..., k:]


def act_batch(weights, biases, which, z, h):
    """Batched controller: agent i uses candidate `which[i]`.

    Args:
        weights: (P, A, D) float32; biases: (P, A) float32 (from `unflatten`).
        which: (N,) int candidate of each agent.
        z: (N, z_size) float32; h: (N, hidden_size) float32 (NumPy or CuPy).

    Returns:
        (N, A) float32 actions in [-1, 1], on the device of z.
    """
    xp = chainer.backend.get_array_module(z)
    x = xp.concatenate([z, h], axis=1) if h is not None and h.shape[1] else z
    w = xp.asarray(weights)
    b = xp.asarray(biases)
    if len(w) == 1:  # one candidate for everyone: a single GEMM
        return xp.tanh(x @ w[0].T + b[0])
    which = xp.asarray(which)
    return xp.tanh(xp.einsum("nad,nd->na", w[which], x) + b[which])
