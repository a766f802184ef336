"""Where the agent is limited: linear probes of V's z and M's h (`probe`), and M's
trustworthiness as a simulator (`world_model`).

The top layer: may import every other package of `lib`.
"""
