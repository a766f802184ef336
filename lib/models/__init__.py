"""V, M and C as Chainer links (`vae`, `mdn_rnn`, `controller`), and `checkpoints`,
which rebuilds them from their weights and JSON sidecars.

Imports `lib.kernels` (their CPU fast paths) and the top-level utilities.
"""
