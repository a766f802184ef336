"""Process pools: local `multiprocessing`, or a Ray cluster with the same API.

`--backend ray [--address ADDR]` swaps `multiprocessing.Pool` for
`ray.util.multiprocessing.Pool`; nothing else in a script changes.
"""

from __future__ import annotations

import multiprocessing

BACKENDS = ("local", "ray")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot be used here (for example Ray missing)."""


def check_backend(backend: str) -> None:
    """Raises BackendUnavailable unless `backend` can run here (Ray installed for "ray")."""
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "ray":
        try:
            import ray  # noqa: F401  (optional: only --backend ray needs it)
        except ImportError:
            raise BackendUnavailable(
                "--backend ray needs Ray: pip install -r requirements-ray.txt"
            ) from None


def make_pool(
    workers: int, backend: str = "local", address: str | None = None, initializer=None, initargs=()
):
    """A pool with `map` / `imap_unordered` / `terminate` / context-manager use.

    Args:
        workers: number of worker processes.
        backend: "local" (multiprocessing, fork) or "ray".
        address: Ray cluster address (None starts a local Ray instance).
        initializer, initargs: run once in each worker, as in multiprocessing.
    """
    check_backend(backend)
    if backend == "local":
        # fork: workers inherit the already-compiled numba kernels and loaded
        # modules, so they start in milliseconds.
        return multiprocessing.get_context("fork").Pool(workers, initializer, initargs)
    from ray.util.multiprocessing import Pool as RayPool  # optional: checked just above

    kwargs = {"ray_address": address} if address else {}
    return RayPool(processes=workers, initializer=initializer, initargs=initargs, **kwargs)
