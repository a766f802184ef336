"""Times each model workload alone and beside a second project job; one JSON line each.

Two experiments side by side on a 2-core machine share its cores. This measures what
each workload of `bench_models.py` keeps of its solo speed when a second job, a loop
of another workload (`--partner`), runs beside it, and what the partner keeps.

For every workload W, in alternating rounds (`--rounds`): W alone, then W beside its
partner P, with P started first and warmed up. Each measurement is a fresh
`bench_models.py W` process, so it pays the same start-up alone and beside. Output,
one JSON line per workload (`name` is W; rates are W's units, see bench_models.py):

    {"name": W, "per_sec": W's median rate beside P, "solo_per_sec": alone,
     "ratio": beside / solo, "partner": P, "partner_ratio": P's rate beside W over
     P's own solo rate, "rounds": R, "threads": the --threads given to both}

A fair share of two cores between two jobs is a ratio of about 0.5; issue 32 asks that
no workload keeps less than 0.4. `--threads N` is passed to both jobs as
`LIB_THREADS=N` (lib/kernels/runtime.py), to compare a fixed thread count with the
default. Run it on an otherwise idle machine (it loads both cores itself).

Usage: `python benchmarks/bench_contention.py [--rounds 2] [--partner P] [W ...]`

Reads: nothing. Writes: stdout only.
"""

import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from rounds import _Parser  # argparse with the project's one-line errors

BENCH = os.path.join(HERE, "bench_models.py")
# The workloads issue 32 names: V train, V encode, M train, the dream, the control step.
DEFAULT = ["vae_train", "vae_encode", "rnn_train", "dream_b1024", "ctrl_b64"]
# Each beside the job that hurt it most in the measurements: V beside M's
# training, the rest beside V's training.
PARTNERS = {"vae_train": "rnn_train", "vae_encode": "rnn_train"}
DEFAULT_PARTNER = "vae_train"


def parse_args(argv=None):
    p = _Parser(description=__doc__.splitlines()[0])
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"bench_models.py workloads to measure (default: {' '.join(DEFAULT)})",
    )
    p.add_argument(
        "--partner",
        default=None,
        help="the workload looped beside each one (default: rnn_train beside V's "
        "workloads, vae_train beside the others)",
    )
    p.add_argument("--rounds", type=int, default=2, help="alternating solo/beside rounds (median)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="LIB_THREADS for both jobs (default: unset, the project's default)",
    )
    p.add_argument(
        "--warmup", type=float, default=8.0, help="seconds the partner runs before W starts"
    )
    p.add_argument(
        "--partner-seconds",
        type=float,
        default=20.0,
        help="seconds the partner's solo speed is measured over (after --warmup)",
    )
    p.add_argument(
        "--bench",
        default=BENCH,
        help="the benchmark script: `SCRIPT NAME` prints W's JSON line, `SCRIPT --forever "
        "NAME` loops it printing seconds per call",
    )
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.warmup < 0 or args.partner_seconds <= 0:
        p.error("--warmup must be >= 0 and --partner-seconds > 0")
    if not os.path.isfile(args.bench):
        p.error(f"--bench: no such file: {args.bench}")
    return args


def _env(threads):
    env = dict(os.environ)
    if threads is not None:
        env["LIB_THREADS"] = str(threads)
    return env


def measure(bench, name, env):
    """W's rate from one `bench_models.py W` process."""
    out = subprocess.run(
        [sys.executable, bench, name], capture_output=True, text=True, env=env, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["per_sec"]


class Partner:
    """`bench_models.py --forever P` in the background: P's steps in a loop, each round's
    seconds per call read from its stdout when it is stopped."""

    def __init__(self, bench, name, env, warmup):
        self.proc = subprocess.Popen(
            [sys.executable, bench, "--forever", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        time.sleep(warmup)

    def stop(self):
        """P's median seconds per call over its rounds (all but the first, which
        overlapped the warm-up), or None if it finished fewer than two."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=60)
        times = [json.loads(ln)["sec_per_call"] for ln in out.splitlines() if ln.startswith("{")]
        return statistics.median(times[1:]) if len(times) > 1 else None


def partner_alone(bench, name, env, seconds):
    """P's seconds per call with nothing beside it, over `seconds` of its loop."""
    job = Partner(bench, name, env, seconds)
    return job.stop()


def main(argv=None):
    args = parse_args(argv)
    env = _env(args.threads)
    for name in args.names or DEFAULT:
        partner = args.partner or PARTNERS.get(name, DEFAULT_PARTNER)
        solo, beside, partner_beside = [], [], []
        partner_solo = partner_alone(args.bench, partner, env, args.warmup + args.partner_seconds)
        for _ in range(args.rounds):
            solo.append(measure(args.bench, name, env))
            job = Partner(args.bench, partner, env, args.warmup)
            try:
                beside.append(measure(args.bench, name, env))
            finally:
                rate = job.stop()
            if rate is not None:
                partner_beside.append(rate)
        s, b = statistics.median(solo), statistics.median(beside)
        line = {
            "name": name,
            "per_sec": b,
            "solo_per_sec": s,
            "ratio": b / s,
            "partner": partner,
            "partner_ratio": (
                partner_solo / statistics.median(partner_beside)
                if partner_beside and partner_solo
                else None
            ),
            "rounds": args.rounds,
            "threads": args.threads,
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
