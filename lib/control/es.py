"""A thin CMA-ES driver over pycma, with pickle-free exact resume.

The loop reads as pycma's own::

    es = CMAES(n, popsize=64, sigma=0.1, seed=1)
    while es.generation < generations:
        xs = es.ask()
        es.tell(xs, returns_of(xs))      # returns: higher is better

- pycma minimises: the sign of the returns is flipped in `tell`, nowhere else.
- pycma draws its samples from NumPy's global generator, which its `seed`
  option reseeds. The driver keeps that generator's state to itself: every call
  into pycma swaps the driver's state in and back out, so nothing else in the
  process can disturb the search, and the search disturbs nothing else.
- Resume without pickles: a snapshot holds the returns of every past
  generation (plus a checksum of each generation's candidates). `replay` builds
  a fresh strategy with the same settings and re-tells that history; because
  every random draw is reproduced, it reaches exactly the same state, and the
  checksums prove it. Its arithmetic must repeat bit for bit too: pycma's matrix
  products run on one BLAS thread (`runtime.single_blas_thread`), since a product
  summed in another order by another thread count (which `--threads auto` changes
  with the machine's load) drifts, and a 7,842-parameter search recorded beside other
  jobs failed to replay at its 47th generation.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np

from lib.fileio import atomic_path
from lib.kernels import runtime

# The constructor's settings, saved by name with the history.
SETTINGS = ("n_params", "popsize", "sigma", "seed", "diagonal")
# Settings that files from before they existed lack, and the value those runs used.
SETTING_DEFAULTS = {"diagonal": False}


class ReplayMismatch(RuntimeError):
    """Replaying a saved history did not reproduce the same candidates."""


class CannotResume(ValueError):
    """A saved search cannot be continued; the message names the file and what to do."""


def _checksum(xs: np.ndarray) -> float:
    return float(np.asarray(xs, np.float64).sum())


class CMAES:
    """CMA-ES maximising returns.

    Args:
        n_params: dimension of the search space.
        popsize: candidates per generation.
        sigma: initial step size.
        seed: non-zero int (pycma treats 0 as "use the clock").
        x0: initial mean (zeros by default).
        log_prefix: where pycma may write its own logs (None: nowhere).
        diagonal: False (the paper) adapts a full covariance matrix; True adapts only its
            diagonal (separable CMA-ES, pycma's `CMA_diagonal`), whose learning rates grow
            with the dimension, so step sizes per parameter adapt in far fewer
            generations when parameters are many (578 for C at paper sizes).
    """

    def __init__(
        self, n_params, popsize=64, sigma=0.1, seed=1, x0=None, log_prefix=None, diagonal=False
    ):
        if seed == 0:
            raise ValueError("pycma treats seed 0 as 'use the clock': derive a non-zero seed")
        self.settings = {
            "n_params": int(n_params),
            "popsize": int(popsize),
            "sigma": float(sigma),
            "seed": int(seed),
            "diagonal": bool(diagonal),
        }
        x0 = np.zeros(n_params) if x0 is None else np.asarray(x0, np.float64)
        if x0.shape != (int(n_params),):
            raise ValueError(f"x0 has shape {x0.shape}, expected ({int(n_params)},)")
        self.x0 = x0.copy()
        opts = {
            "popsize": int(popsize),
            "seed": int(seed),
            "verbose": -9,
            "verb_disp": 0,
            "verb_log": 0 if log_prefix is None else 1,
        }
        if diagonal:
            opts["CMA_diagonal"] = True
        if log_prefix is not None:
            opts["verb_filenameprefix"] = log_prefix
        import cma  # here: its import (SciPy's stats with it) takes 1.4 s of every start

        outside = np.random.get_state()
        try:
            self.es = cma.CMAEvolutionStrategy(x0, float(sigma), opts)
            self._rng_state = np.random.get_state()
        finally:
            np.random.set_state(outside)
        self.history: list[np.ndarray] = []  # returns of each generation, (popsize,)
        self.checksums: list[float] = []

    @contextlib.contextmanager
    def _own_rng(self):
        outside = np.random.get_state()
        np.random.set_state(self._rng_state)
        try:
            yield
        finally:
            self._rng_state = np.random.get_state()
            np.random.set_state(outside)

    @property
    def generation(self) -> int:
        return len(self.history)

    def ask(self) -> np.ndarray:
        """(popsize, n_params) float64 candidates of the next generation."""
        with self._own_rng(), runtime.single_blas_thread():
            return np.array(self.es.ask())

    def tell(self, xs: np.ndarray, returns: np.ndarray) -> None:
        """Reports the candidates' returns (higher is better)."""
        returns = np.asarray(returns, np.float64)
        if returns.shape != (len(xs),):
            raise ValueError(f"need one return per candidate, got {returns.shape} for {len(xs)}")
        with self._own_rng(), runtime.single_blas_thread():
            self.es.tell(list(xs), list(-returns))  # pycma minimises: the one sign flip
        self.history.append(returns.copy())
        self.checksums.append(_checksum(xs))

    @property
    def mean(self) -> np.ndarray:
        """The distribution's mean (pycma's `result.xfavorite`)."""
        return np.array(self.es.result.xfavorite)

    @property
    def sigma(self) -> float:
        return float(self.es.sigma)

    @property
    def stds(self) -> np.ndarray:
        return np.array(self.es.result.stds)

    def best(self) -> tuple[np.ndarray, float]:
        """Best candidate ever evaluated and its return (`result.xbest`)."""
        return np.array(self.es.result.xbest), -float(self.es.result.fbest)

    def state_arrays(self) -> dict:
        """Everything `replay` needs, as plain arrays (no pickles): the `SETTINGS` by
        name, the initial mean `x0`, `history` (G, popsize) float64 returns and
        `checksums` (G,) float64."""
        p = self.settings["popsize"]
        return {
            **{k: np.array(self.settings[k]) for k in SETTINGS},
            "x0": self.x0,
            "history": np.array(self.history, np.float64).reshape(-1, p),
            "checksums": np.array(self.checksums, np.float64),
        }

    def save(self, path: str, record=None) -> None:
        """Writes `state_arrays()` and `record` (anything JSON-able, under the key
        "record") to the `.npz` at `path`, atomically."""
        arrays = self.state_arrays()
        arrays["record"] = np.array(json.dumps(record))
        with atomic_path(path) as tmp:
            np.savez(tmp, **arrays)

    @staticmethod
    def load_state(path: str) -> tuple[dict, object]:
        """The arrays and record `save` wrote, for `replay`.

        Files from before the settings were saved by name (one `settings` array in
        `SETTINGS` order) load too.

        Raises:
            OSError, KeyError, ValueError: the file is missing, unreadable or incomplete.
        """
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if "settings" in arrays:
            arrays.update(zip(SETTINGS, arrays.pop("settings")))
        for k, v in SETTING_DEFAULTS.items():
            arrays.setdefault(k, np.array(v))
        record = json.loads(str(arrays.pop("record"))) if "record" in arrays else None
        missing = [k for k in (*SETTINGS, "history", "checksums") if k not in arrays]
        if missing:
            raise KeyError(f"no {', '.join(missing)}")
        return arrays, record

    @classmethod
    def resume(cls, path: str, n_params: int) -> tuple[CMAES, object]:
        """The search saved at `path` (`load_state`, then `replay`) and its record.

        Raises:
            CannotResume: the file is missing, unreadable or incomplete, searched
                another number of parameters, or does not replay.
        """
        try:
            arrays, record = cls.load_state(path)
        except (OSError, KeyError, ValueError) as e:
            raise CannotResume(
                f"{path}: cannot resume ({type(e).__name__}: {e}) — use --overwrite to start again"
            ) from None
        if int(arrays["n_params"]) != n_params:
            raise CannotResume(
                f"{path} searched {int(arrays['n_params'])} parameters, this V+M needs {n_params} — use --overwrite"
            )
        try:
            return cls.replay(arrays), record
        except ReplayMismatch as e:
            raise CannotResume(
                f"{path}: {e} (another pycma version?) — use --overwrite to start again"
            ) from None
        except (KeyError, ValueError) as e:
            raise CannotResume(
                f"{path}: cannot resume ({type(e).__name__}: {e}) — use --overwrite to start again"
            ) from None

    @classmethod
    def replay(cls, arrays: dict, x0=None, log_prefix=None) -> CMAES:
        """Rebuilds a strategy from `state_arrays()` by re-telling its history. It starts
        from the saved `x0` (files from before it was saved started from zero), else `x0`.

        Raises:
            ReplayMismatch: a generation's candidates differ from the original
                run's (for example another pycma version).
        """
        es = cls(
            int(arrays["n_params"]),
            int(arrays["popsize"]),
            float(arrays["sigma"]),
            int(arrays["seed"]),
            x0=arrays.get("x0", x0),
            log_prefix=log_prefix,
            diagonal=bool(arrays.get("diagonal", False)),
        )
        for g, (returns, checksum) in enumerate(zip(arrays["history"], arrays["checksums"])):
            xs = es.ask()
            if not np.isclose(_checksum(xs), checksum, rtol=0, atol=1e-9 * max(1.0, abs(checksum))):
                raise ReplayMismatch(f"generation {g + 1} does not replay to the saved candidates")
            es.tell(xs, returns)
        return es
