"""Fitness of controller candidates, computed across worker processes.

A generation's (candidate, trial) rollouts are cut into fixed groups of
candidates (all their trials together); a worker steps one group's rollouts in
lockstep as one batch. The groups depend only on the population, never on the
number of workers, and trial j of every candidate uses the same episode
(common random numbers: env seed, or dream start and noise, derived from
(seed, generation, j)); so results are identical for any `--workers`.

Workers load V and M once, in their initializer. With `--backend ray` the same
tasks go through `ray.util.multiprocessing.Pool`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import tempfile
from concurrent import futures

import numpy as np

from lib import parallel
from lib.control.agent import WorldModelsAgent, dream_rollouts
from lib.control.pixel_dream import Starts, pixel_dream_rollouts
from lib.devices import select_device
from lib.env import socnavenv as sn
from lib.env.rollouts import run_episodes
from lib.kernels import runtime
from lib.kernels.fast_encoder import make_encoder
from lib.models import saved_models
from lib.seeding import derive_seed


class WorkerDied(RuntimeError):
    """A worker process died (or raised) while evaluating candidates."""


@dataclasses.dataclass
class Spec:
    """What a worker needs to evaluate candidates (all picklable plain data)."""

    data_dir: str
    rnn_mode: str
    trials: int
    seed: int
    dream: bool = False
    temperature: float = 1.0
    env: dict = dataclasses.field(default_factory=dict)
    dream_starts: str | None = None  # .npz with mu, logvar (E, z) of real first frames
    mover: bool = False  # dream in pixels (`lib.control.pixel_dream`; the starts' frames)
    gpu: int = -1  # the CUDA GPU each worker runs V, M and C on; -1 the CPU


_WORKER: dict = {}


def init_worker(spec: Spec) -> None:
    """Loads V (unless dreaming) and M once per process, on the spec's device."""
    _WORKER.clear()
    _WORKER["spec"] = spec
    device = select_device(spec.gpu)
    rnn, sidecar = saved_models.load_rnn(spec.data_dir, spec.rnn_mode, device=device)
    _WORKER["rnn"] = rnn
    _WORKER["done_pos_weight"] = saved_models.done_pos_weight(sidecar)
    _WORKER["z_source"] = saved_models.z_source(sidecar)
    if spec.dream:
        with np.load(spec.dream_starts, allow_pickle=False) as z:
            _WORKER["starts"] = (z["mu"], z["logvar"])
            if spec.mover:
                _WORKER["pixel_starts"] = Starts(*(z[k] for k in Starts._fields))
    if spec.mover:  # the pixel dream: V reads the mover's frames
        _WORKER["mover"] = saved_models.load_mover(spec.data_dir)
    if not spec.dream or spec.mover:
        _WORKER["vae"], _ = saved_models.load_vae(spec.data_dir, device)
        _WORKER["encoder"] = make_encoder(_WORKER["vae"])


def init_pool_worker(spec: Spec) -> None:
    """`init_worker` for a local pool process, which first limits BLAS to one thread.

    One BLAS thread per worker, as the in-process path has (`runtime.single_blas_thread`):
    GEMM results can depend on the thread count, and fitness must not depend on
    `--workers`. The limit is set in the worker (its environment, read by
    `runtime.kernel_threads`, and OpenBLAS's own setting), never in the parent's.

    The worker ignores SIGINT: Ctrl-C at a terminal signals the whole process group,
    and 07 defers it (`training.DeferredInterrupt`) to finish the generation under way,
    which needs its workers alive.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"
    init_worker(spec)
    _WORKER["blas_limit"] = runtime.single_blas_thread()  # applied now, for the worker's life


def trial_seeds(seed: int, generation: int, trials: int) -> list[int]:
    """Env seeds of trials 0..trials-1 of a generation (shared by all candidates)."""
    return [derive_seed(seed, "es", generation, j) for j in range(trials)]


def dream_starts(
    seed: int,
    generation: int,
    trials: int,
    mu: np.ndarray,
    logvar: np.ndarray,
    source: str = "sample",
) -> np.ndarray:
    """(trials, z) starting latents: trial j samples z from the posterior of one
    real first frame, both chosen by (seed, generation, j); with `source` "mean" (an M
    trained on V's means, 04 --z-source mean) the frame's mean itself."""
    out = []
    for j in range(trials):
        rng = np.random.default_rng(derive_seed(seed, "es-dream", generation, j))
        e = rng.integers(len(mu))
        noise = rng.standard_normal(mu.shape[1]).astype(np.float32)
        out.append(mu[e] if source == "mean" else mu[e] + np.exp(0.5 * logvar[e]) * noise)
    return np.array(out, np.float32)


def dream_start_episodes(seed: int, generation: int, trials: int, episodes: int) -> np.ndarray:
    """(trials,) int: the episode (of `episodes`) whose first frame `dream_starts` starts
    trial j from, for dreams that start from the episode's frames instead
    (`lib.control.pixel_dream`)."""
    return np.array(
        [
            np.random.default_rng(derive_seed(seed, "es-dream", generation, j)).integers(episodes)
            for j in range(trials)
        ],
        np.int64,
    )


def evaluate_group(task: dict) -> dict:
    """Runs one group: every candidate in it on every trial, in lockstep.

    Args:
        task: {"generation", "first" (index of the group's first candidate),
            "params" (C, n_params)}.

    Returns:
        {"first", "returns" (C, trials), "lengths" (C, trials)}.
    """
    spec: Spec = _WORKER["spec"]
    rnn = _WORKER["rnn"]
    params = np.asarray(task["params"], np.float32)
    n_cand, trials, gen = len(params), spec.trials, task["generation"]
    config = sn.EnvConfig(**spec.env)
    which = np.repeat(np.arange(n_cand), trials)  # a dream's candidate
    if spec.mover:
        starts = _WORKER["pixel_starts"]
        episodes = dream_start_episodes(spec.seed, gen, trials, len(starts.cur))
        starts = Starts(*(x[np.tile(episodes, n_cand)] for x in starts))
        returns, lengths = pixel_dream_rollouts(
            rnn, _WORKER["mover"], _WORKER["vae"], params, which, starts, config.max_steps,
            done_pos_weight=_WORKER["done_pos_weight"], encoder=_WORKER["encoder"],
        )  # fmt: skip
    elif spec.dream:
        mu, logvar = _WORKER["starts"]
        z0 = dream_starts(spec.seed, gen, trials, mu, logvar, _WORKER["z_source"])
        z0 = np.tile(z0, (n_cand, 1))
        rng = np.random.default_rng(derive_seed(spec.seed, "es-dream-noise", gen, task["first"]))
        returns, lengths = dream_rollouts(
            rnn,
            params,
            which,
            z0,
            spec.temperature,
            rng,
            config.max_steps,
            done_pos_weight=_WORKER["done_pos_weight"],
        )
    else:
        seeds = trial_seeds(spec.seed, gen, trials) * n_cand
        agent = WorldModelsAgent(
            len(seeds),
            _WORKER["vae"],
            rnn,
            params,
            candidate_of=lambda k: k // trials,
            encoder=_WORKER["encoder"],
        )
        returns = np.zeros(len(seeds))
        lengths = np.zeros(len(seeds), np.int64)

        def collect(ep):
            returns[ep.index] = ep.ret
            lengths[ep.index] = ep.length

        run_episodes(agent, seeds, config, len(seeds), collect)
    return {
        "first": task["first"],
        "returns": returns.reshape(n_cand, trials),
        "lengths": lengths.reshape(n_cand, trials),
    }


def _run_marked(task_fn, task, marker_dir):
    """Runs a task in a worker, leaving a note of the candidates it holds while
    it runs, so that if the process dies the parent can say which they were."""
    note = os.path.join(marker_dir, str(os.getpid()))
    with open(note, "w") as f:
        f.write(f"{task['first']} {task['first'] + len(task['params']) - 1}")
    result = task_fn(task)
    os.remove(note)
    return result


class Evaluator:
    """Evaluates a population: `evaluator(params, generation) -> (returns, lengths)`,
    each (P, trials).

    Args:
        spec: what workers load and how they evaluate.
        workers: processes (1 and local: in this process, no pool).
        backend: "local" or "ray".
        address: Ray address.
        group_size: candidates per lockstep batch (a fixed number, so results
            do not depend on `workers`).
        task_fn: the function a worker runs per group (`evaluate_group`; tests
            substitute one that fails).
    """

    def __init__(
        self,
        spec: Spec,
        workers: int = 1,
        backend: str = "local",
        address=None,
        group_size: int = 4,
        task_fn=evaluate_group,
    ):
        self.spec = spec
        self.task_fn = task_fn
        self.workers = workers
        self.backend = backend
        self.group_size = group_size
        self.pool = None
        if backend == "local" and workers == 1:
            init_worker(spec)
        else:
            init = init_pool_worker if backend == "local" else init_worker
            # forkserver: this process may hold kernel threads and a CUDA context
            self.pool = parallel.make_pool(workers, backend, address, init, (spec,), "forkserver")

    def tasks(self, params: np.ndarray, generation: int) -> list[dict]:
        return [
            {"generation": generation, "first": i, "params": params[i : i + self.group_size]}
            for i in range(0, len(params), self.group_size)
        ]

    def __call__(self, params: np.ndarray, generation: int):
        params = np.asarray(params, np.float32)
        tasks = self.tasks(params, generation)
        results = []
        if self.pool is None:
            # One BLAS thread, as in every pool worker: GEMM results can depend
            # on the thread count, and fitness must not depend on --workers.
            with runtime.single_blas_thread():
                results = [self.task_fn(t) for t in tasks]
        elif parallel.is_local(self.pool):
            with tempfile.TemporaryDirectory(prefix="wm_workers_") as notes:
                pending = {self.pool.submit(_run_marked, self.task_fn, t, notes): t for t in tasks}
                for fut in futures.as_completed(pending):
                    t = pending[fut]
                    try:
                        results.append(fut.result())
                    except futures.process.BrokenProcessPool:
                        held = self._dead_workers_candidates(notes)
                        self.close()
                        where = f"candidates {held}" if held else "an unknown candidate"
                        raise WorkerDied(
                            f"a worker died while evaluating {where} of generation {generation + 1}"
                        ) from None
                    except Exception as e:  # noqa: BLE001 — any failure names its candidates
                        self.close()
                        raise WorkerDied(self._describe(t, e)) from None
        else:
            try:
                results = self.pool.map(self.task_fn, tasks)
            except Exception as e:  # noqa: BLE001
                raise WorkerDied(self._describe(tasks[0], e, all_tasks=tasks)) from None
        returns = np.zeros((len(params), self.spec.trials))
        lengths = np.zeros((len(params), self.spec.trials), np.int64)
        for r in results:
            returns[r["first"] : r["first"] + len(r["returns"])] = r["returns"]
            lengths[r["first"] : r["first"] + len(r["lengths"])] = r["lengths"]
        return returns, lengths

    def _dead_workers_candidates(self, notes: str) -> str:
        """'a-b' ranges noted by worker processes that have exited."""
        held = []
        for pid, proc in parallel.worker_processes(self.pool).items():
            note = os.path.join(notes, str(pid))
            if proc.exitcode is not None and os.path.exists(note):
                with open(note) as f:
                    first, last = f.read().split()
                held.append(f"{first}-{last}")
        return ", ".join(held)

    def _describe(self, task, error, all_tasks=None) -> str:
        if all_tasks is not None:
            first, last = 0, sum(len(t["params"]) for t in all_tasks) - 1
        else:
            first, last = task["first"], task["first"] + len(task["params"]) - 1
        what = (
            "a worker died"
            if isinstance(error, futures.process.BrokenProcessPool)
            else f"a worker failed ({type(error).__name__}: {error})"
        )
        return f"{what} while evaluating candidates {first}-{last} of generation {task['generation'] + 1}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Stops the workers (idempotent)."""
        if self.pool is None:
            return
        parallel.shutdown(self.pool)
        self.pool = None
