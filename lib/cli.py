"""Command-line plumbing shared by the numbered scripts.

Bad input must give one line on stderr and a non-zero exit, never a
traceback; `ArgumentParser.error` and `fail` both do that.
"""

from __future__ import annotations

import argparse
import os
import sys


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default after its help, unless the help already says it (a default
    that depends on other flags, such as `add_out_arg`'s, would read "(default: None)")."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and defaults shown in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        fail(f"{message} (see {self.prog} --help)", prog=self.prog)

    def parse_args(self, args=None, namespace=None):
        """Parsed arguments; a `--threads` (`add_common_args`) takes effect now, for this
        process and those it starts (`THREADS_VARIABLE`, read by lib/kernels/runtime.py)."""
        parsed = super().parse_args(args, namespace)
        if getattr(parsed, "threads", None) is not None:
            os.environ[THREADS_VARIABLE] = str(parsed.threads)
        return parsed


# The environment variable that fixes the kernels' and BLAS's thread count ("auto", the
# default, follows the machine's load): `--threads` sets it; lib/kernels/runtime.py reads it.
THREADS_VARIABLE = "LIB_THREADS"


def fail(message: str, prog: str | None = None, code: int = 2):
    """Prints `prog: error: message` as one line on stderr and exits."""
    prog = prog or os.path.basename(sys.argv[0])
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def stopped(stop: Exception):
    """Prints the message of a run that stopped on purpose (`training.Stopped`) on stdout
    and exits with its `code` (0 after --max-iterations, 130 after Ctrl-C)."""
    print(stop)
    raise SystemExit(stop.code)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a temperature, a weight)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a size in metres)."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def threads_value(text: str) -> str:
    """argparse type of --threads: "auto" or a whole number >= 1 (as text)."""
    if text.strip().lower() == "auto":
        return "auto"
    return str(positive_int(text))


def file_stem(text: str) -> str:
    """argparse type: a plain file-name stem (letters, digits, '_', '-', '.'; no folders)."""
    if not text or not all(c.isalnum() or c in "_-." for c in text) or text.startswith("."):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a plain file name (letters, digits, _ - . only)"
        )
    return text


def ensure_writable_dir(path: str) -> None:
    """Creates `path` if needed and checks that files can be written in it;
    exits with one line if not."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test_{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        fail(f"cannot write to {path}: {e.strerror or e} — choose another --data-dir")


def add_common_args(parser: argparse.ArgumentParser, seed: int = 0) -> None:
    """--data-dir, --seed and --threads, which every script has."""
    parser.add_argument(
        "--data-dir", default="data", help="root folder for all data, models and results"
    )
    parser.add_argument("--seed", type=non_negative_int, default=seed, help="random seed")
    parser.add_argument(
        "--threads",
        type=threads_value,
        default=argparse.SUPPRESS,
        help="threads for the CPU kernels and BLAS: a number fixes it (the same bits on "
        "every run); auto follows the machine's load, using every core when it is idle "
        f"and fewer beside other jobs (default: ${THREADS_VARIABLE} if set, else auto; "
        "docs/performance.md, Two jobs at once)",
    )


def add_n_envs_arg(parser: argparse.ArgumentParser, what: str = "episodes") -> None:
    """--n-envs: how many episodes run in lockstep (results never depend on it)."""
    parser.add_argument(
        "--n-envs", type=positive_int, default=64, help=f"{what} stepped in lockstep"
    )


def add_room_args(parser: argparse.ArgumentParser, n_humans: int, max_steps: int) -> None:
    """--n-humans and --max-steps: the room's people and its episodes' step limit
    (defaults: the environment's, which the caller passes)."""
    parser.add_argument(
        "--n-humans", type=non_negative_int, default=n_humans, help="people in the room"
    )
    parser.add_argument(
        "--max-steps", type=positive_int, default=max_steps, help="steps before timeout"
    )


def add_temperature_arg(
    parser: argparse.ArgumentParser, samples: str = "M's samples in the dream"
) -> None:
    """--temperature: tau of `samples` (1: as M learnt them, 0: their means)."""
    parser.add_argument(
        "--temperature", type=non_negative_float, default=1.0, help=f"tau of {samples}"
    )


def add_out_arg(parser: argparse.ArgumentParser, default_name: str) -> None:
    """--out: the results JSON, by default <data-dir>/results/`default_name`."""
    parser.add_argument(
        "--out", default=None, help=f"results JSON (default: <data-dir>/results/{default_name})"
    )


def results_paths(args, default_name: str) -> tuple[str, str]:
    """<data-dir>/results, and the results JSON: `--out` (`add_out_arg`), by default
    `default_name` in that folder."""
    results_dir = os.path.join(args.data_dir, "results")
    return results_dir, args.out or os.path.join(results_dir, default_name)


def add_gpu_arg(parser: argparse.ArgumentParser, what: str = "V and M") -> None:
    """--gpu, which every script that runs V or M has."""
    parser.add_argument(
        "--gpu",
        type=int,
        default=-1,
        help=f"CUDA GPU id for {what} (needs CuPy: see docs/performance.md, GPU); "
        "-1 (default) runs on the CPU with this project's fast kernels",
    )


def add_resume_args(
    parser: argparse.ArgumentParser, snapshot: str, existing: str = "a snapshot"
) -> None:
    """--resume and --overwrite; `snapshot` names what --resume continues from and
    `existing` what --overwrite replaces, for --help. `check_run_args` checks them."""
    parser.add_argument("--resume", action="store_true", help=f"continue from {snapshot}")
    parser.add_argument(
        "--overwrite", action="store_true", help=f"start afresh even if {existing} exists"
    )


def add_run_args(parser: argparse.ArgumentParser, snapshot: str) -> None:
    """--resume, --overwrite, --snapshot-interval and --max-iterations, which the
    training scripts (03, 04) share; `snapshot` names their snapshot file for --help.
    `check_run_args` checks them."""
    add_resume_args(parser, snapshot)
    parser.add_argument(
        "--snapshot-interval", type=positive_int, default=1, help="epochs between snapshots"
    )
    parser.add_argument(
        "--max-iterations",
        type=positive_int,
        default=None,
        help="stop after this many batches in this run and save a snapshot (for time-boxed runs)",
    )


def check_run_args(parser: argparse.ArgumentParser, args) -> None:
    """Refuses --resume with --overwrite (through `parser.error`)."""
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)
