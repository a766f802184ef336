"""V, M and C as Chainer links: `vae` (V), `mdn_rnn` (the paper's M), `map_rnn` (the map
M over V's latent map, warped by `ego_warp`'s ego-motion), `rollout_loss` (the map M's
loss on its own open-loop dream), `controller` (C), `task_head` (V's and M's optional
head onto a teacher's action), `lookahead_heads` (the look-ahead heads the planner reads),
and `saved_models`, which rebuilds finished models from their weights and JSON sidecars.

Imports `lib.kernels` (their CPU fast paths) and the top-level utilities.
"""
