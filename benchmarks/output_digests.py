"""Digests of the pipeline's outputs on the demo preset, to show a change leaves them identical.

Runs, at `--seed 0` in a scratch folder: 01 and 02 at the demo's sizes, 03 for one epoch,
04 (dream, residual) for one epoch and 07 for two generations, with the demo's settings
(`make demo`), then prints one JSON line per output with the SHA-256 of its arrays
(names, dtypes, shapes and bytes; a zip's timestamps do not count):

- `vae_data`, `rnn_data`: every rollout `.npz` of both splits, in name order (not 04's
  latent cache, named by a hash of V's file);
- `vae`, `rnn_dream`, `controller`: the weights files.

Digests depend on the processor and the library versions (OpenBLAS picks kernels by
CPU), so compare two runs on the same machine, before and after a change.

Usage:
    python benchmarks/output_digests.py --out before.json          # record
    python benchmarks/output_digests.py --compare before.json      # exit 1 on a difference

Reads: nothing. Writes: the scratch folder (deleted unless `--keep`), `--out`.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import numpy as np

# The demo's commands (Makefile `demo`), cut to one epoch of V and M and two generations of C.
STEPS = [
    ["01_generate_vae_data.py", "--rollouts", "200", "--testrollouts", "20"],
    ["02_generate_rnn_data.py", "--episodes", "300", "--testepisodes", "30"],
    ["03_train_vae.py", "--epochs", "1", "--lr", "1e-3", "--object-weight", "10",
     "--test-frames", "1000"],
    ["04_train_rnn.py", "--mode", "dream", "--residual", "--epochs", "1", "--batch-size", "32"],
    ["07_train_controller.py", "--epochs", "2", "--popsize", "32", "--trials", "8",
     "--eval-every", "10"],
]  # fmt: skip


def digest_npz(paths, h=None):
    """SHA-256 over the arrays of `.npz` files: each key, dtype, shape and bytes."""
    h = h or hashlib.sha256()
    for path in paths:
        with np.load(path, allow_pickle=False) as z:
            for key in sorted(z.files):
                a = np.ascontiguousarray(z[key])
                h.update(f"{os.path.basename(path)}/{key}:{a.dtype.str}:{a.shape}".encode())
                h.update(a.tobytes())
    return h.hexdigest()


def run_pipeline(data_dir: Path, seed: int) -> None:
    for step in STEPS:
        start = time.perf_counter()
        cmd = [sys.executable, str(ROOT / step[0]), *step[1:], "--seed", str(seed)]
        proc = subprocess.run(
            [*cmd, "--data-dir", str(data_dir)],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            sys.exit(f"output_digests.py: error: {step[0]} failed:\n{proc.stderr[-2000:]}")
        print(f"{step[0]}: {time.perf_counter() - start:.0f} s", file=sys.stderr)


def digests(data_dir: Path) -> dict:
    out = {}
    for name in ("vae_data", "rnn_data"):
        # the rollouts only: 04's latent cache beside them is named by a hash of V's
        # file, whose zip timestamps differ from run to run
        files = sorted(
            str(p) for split in ("train", "test") for p in (data_dir / name / split).glob("*.npz")
        )
        out[name] = digest_npz(files)
    for name in ("vae", "rnn_dream", "controller"):
        out[name] = digest_npz([str(data_dir / "models" / f"{name}.npz")])
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0, help="--seed of every step")
    p.add_argument("--out", default=None, help="write the digests to this JSON file")
    p.add_argument("--compare", default=None, help="a JSON file of earlier digests to compare")
    p.add_argument("--keep", default=None, help="run in this folder and keep it")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    expected = None
    if args.compare:
        try:
            with open(args.compare) as f:
                expected = json.load(f)
        except (OSError, ValueError) as e:
            sys.exit(f"output_digests.py: error: cannot read {args.compare} ({e})")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="digests_"))
    try:
        run_pipeline(work / "data", args.seed)
        found = digests(work / "data")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for name, value in found.items():
        print(json.dumps({"name": name, "sha256": value}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(found, f, indent=2)
    if expected is not None:
        differ = [k for k in found if expected.get(k) != found[k]]
        if differ:
            sys.exit(f"output_digests.py: error: outputs differ from {args.compare}: {differ}")
        print(f"identical to {args.compare}", file=sys.stderr)


if __name__ == "__main__":
    main()
