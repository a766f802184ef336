"""A subprocess of tests/test_threads.py: two training steps of V and of M, on the
thread count its environment gives; writes the weights to argv[1] and prints
`threads N monitor B` (B: whether the load monitor started)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import numpy as np

from lib.kernels import runtime
from lib.kernels.fast_adam import FastAdam
from lib.models.mdn_rnn import MDNRNN, MDNRNNLoss
from lib.models.vae import ConvVAE, VAELoss

np.random.seed(0)  # Chainer's initializers
rng = np.random.default_rng(0)
vae, rnn = ConvVAE(), MDNRNN()
v_loss, m_loss = VAELoss(vae, kl_tolerance=0.5, rng=rng), MDNRNNLoss(rnn)
v_opt, m_opt = FastAdam(alpha=1e-3), FastAdam(alpha=1e-3)
v_opt.setup(vae)
m_opt.setup(rnn)
frames = rng.integers(0, 256, (64, 64, 64, 3), dtype=np.uint8)
z = rng.standard_normal((16, 20, 32), dtype=np.float32)
a = rng.uniform(-1, 1, (16, 20, 2)).astype(np.float32)
for _ in range(2):
    v_opt.update(v_loss, frames)
    rnn.cleargrads()
    value, _ = m_loss(z[:, :-1], a[:, :-1], z[:, 1:])
    value.backward()
    m_opt.update()
weights = {f"v{name}": p.array for name, p in vae.namedparams()}
weights.update({f"m{name}": p.array for name, p in rnn.namedparams()})
np.savez(sys.argv[1], **weights)
print("threads", runtime.kernel_threads(), "monitor", runtime._LOAD.pid is not None)
