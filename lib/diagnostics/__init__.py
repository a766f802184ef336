"""Where the agent is limited: linear probes of V's z and M's h against the task's true
quantities (`probe`), a linear C fitted by DAgger on each input (`controller_probe`),
and M as a simulator: its open-loop dream under the real actions (`open_loop`), drawn
as real frames over V's decoding (`open_loop_strip`: 06, and 04's TensorBoard images),
and its collision forecasts and dream-against-real ranking (`world_model`).

The top layer: may import every other package of `lib`.
"""
