"""The task: SocNavEnv (one batched numba core), its baseline policies, the lockstep
episode runner with the rollout `.npz` contract, and the evaluator that scores policies.

Imports only the top-level utilities of `lib`.
"""
