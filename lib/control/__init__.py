"""Training and running C: the batched V + M + C agent and dreams inside M (`agent`),
the CMA-ES driver (`es`), fitness across worker processes (`fitness`), C's start by
DAgger from a privileged teacher (`imitation`), the planner that vetoes C's action by
the look-ahead heads and the labelled play they learn from (`lookahead_planner`), and
the agent that plans in M's dream by its return (`dream_planner`).

Imports every package of `lib` below it; only `lib.diagnostics` sits above.
"""
