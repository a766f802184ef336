"""Runs benchmark commands in alternating rounds and prints per-round figures and median ratios.

Each `--side NAME=COMMAND` is a shell command that prints JSON lines `{"name", "per_sec"}`
(this folder's scripts, `../shared/reference/*.py`). Round r runs every side once, in the
order given, so a slow minute on a shared machine hits every side alike. Output: one JSON
line per figure (`{"round", "side", "name", "per_sec"}`), then, for each side and workload
shared with `--reference`, the median over rounds of the per-round ratio
(`{"ratio": side / reference, "name", "median", "rounds"}`). Workloads the reference does
not have (its names differ, as the 2022 frame's `seed_render_64`) can be paired with
`--pair OURS=THEIRS`.

Example (docs/performance.md, Speed):

    python benchmarks/rounds.py --rounds 3 --reference torch \\
        --side new=".venv/bin/python benchmarks/bench_models.py" \\
        --side torch="../ref-venv/bin/python ../shared/reference/torch_ref.py"
    python benchmarks/rounds.py --rounds 2 --reference ref \\
        --pair env_step_image=seed_render_64 \\
        --side new=".venv/bin/python benchmarks/bench_env.py" \\
        --side ref="../ref-venv/bin/python ../shared/reference/seed_render_ref.py"

Reads: nothing. Writes: stdout only.
"""

import argparse
import json
import statistics
import subprocess
import sys


def parse_side(text: str) -> tuple[str, str]:
    name, sep, command = text.partition("=")
    if not sep or not name or not command.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=COMMAND, got {text!r}")
    return name, command


def parse_pair(text: str) -> tuple[str, str]:
    ours, sep, theirs = text.partition("=")
    if not sep or not ours or not theirs:
        raise argparse.ArgumentTypeError(f"expected OURS=THEIRS, got {text!r}")
    return ours, theirs


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors (no usage dump); standalone, so the
    script runs from any venv."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_args(argv=None):
    p = _Parser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--side",
        type=parse_side,
        action="append",
        required=True,
        help="NAME=COMMAND printing JSON lines; give one per side, in run order",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds (each runs every side once)")
    p.add_argument("--reference", default=None, help="the side the ratios are taken against")
    p.add_argument(
        "--pair",
        type=parse_pair,
        action="append",
        default=[],
        help="OURS=THEIRS: compare workload OURS with the reference's THEIRS",
    )
    args = p.parse_args(argv)  # fmt: skip
    names = [n for n, _ in args.side]
    if len(set(names)) != len(names):
        p.error(f"--side names must differ, got {names}")
    if args.reference is not None and args.reference not in names:
        p.error(f"--reference {args.reference!r} is not one of the sides {names}")
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    return args


def run_side(command: str) -> dict:
    """{name: per_sec} from a command's JSON lines (other lines are ignored)."""
    proc = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(
            f"rounds.py: error: `{command}` failed ({proc.returncode}):\n{proc.stderr[-2000:]}"
        )
    out = {}
    for line in proc.stdout.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "name" in row and "per_sec" in row:
            out[row["name"]] = float(row["per_sec"])
    return out


def ratios(figures: dict, reference: str, pairs: dict) -> list[dict]:
    """Median per-round ratio of every side's workloads against the reference's."""
    out = []
    ref = figures[reference]
    for side, rounds in figures.items():
        if side == reference:
            continue
        names = sorted({n for r in rounds for n in r})
        for name in names:
            theirs = pairs.get(name, name)
            per_round = [
                mine[name] / base[theirs]
                for mine, base in zip(rounds, ref)
                if name in mine and base.get(theirs)
            ]
            if per_round:
                out.append({
                    "ratio": f"{side} / {reference}", "name": name,
                    "median": statistics.median(per_round), "rounds": per_round,
                })  # fmt: skip
    return out


def main(argv=None):
    args = parse_args(argv)
    figures = {name: [] for name, _ in args.side}
    for r in range(1, args.rounds + 1):
        for name, command in args.side:
            result = run_side(command)
            figures[name].append(result)
            for workload, rate in result.items():
                print(json.dumps({"round": r, "side": name, "name": workload, "per_sec": rate}),
                      flush=True)  # fmt: skip
    if args.reference is not None:
        for row in ratios(figures, args.reference, dict(args.pair)):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
