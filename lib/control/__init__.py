"""Training and running C: the batched V + M + C agent and dreams inside M (`agent`),
the CMA-ES driver (`es`) and fitness across worker processes (`fitness`).

Imports every package of `lib` below it; only `lib.diagnostics` sits above.
"""
