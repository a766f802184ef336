"""The task: SocNavEnv (one batched numba core), its baseline policies, the lockstep
episode runner with the rollout `.npz` contract, and the evaluator that scores policies.

`lib.env.socnavenv` is the pipeline's name for the top-level package's module
`socnavenv.core` (the same module object), which stands alone so that other projects can
import it without `lib`. Imports only the top-level utilities of `lib` and `socnavenv`.
"""
