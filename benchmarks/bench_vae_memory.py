"""Peak memory of 03_train_vae.py on a large synthetic frame set.

    python benchmarks/bench_vae_memory.py --frames 1000000 --iterations 300

Writes --frames synthetic frames as rollout files (250 frames each, cheap
random shapes that compress well) into a temporary data dir, runs
03_train_vae.py on them for --iterations batches (it builds the uint8
memory-mapped cache first), and prints JSON lines with the cache size, the
seconds taken and the training process's peak resident memory. Memory should
not grow with --frames: compare two sizes.

Needs about 13 GB of free disk per million frames (the cache is uncompressed).
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import numpy as np

from lib import manifest


def make_rollouts(root: Path, frames: int, per_file: int = 250) -> None:
    train = root / "vae_data" / "train"
    train.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = np.full((per_file + 1, 64, 64, 3), 200, np.uint8)
    for i in range(-(-frames // (per_file + 1))):
        obs = base.copy()
        y, x = rng.integers(0, 56, 2)
        obs[:, y : y + 8, x : x + 8] = rng.integers(0, 255, 3, dtype=np.uint8)
        np.savez_compressed(
            train / f"{i:06d}.npz",
            obs=obs,
            action=np.zeros((per_file, 2), np.float32),
            reward=np.zeros(per_file, np.float32),
            done=np.r_[np.zeros(per_file - 1, bool), True],
        )
    manifest.write_json(
        str(root / "vae_data" / "manifest.json"), {"identity": {"env": {"image_size": 64}}}
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=1_000_000, help="synthetic frames")
    p.add_argument("--iterations", type=int, default=300, help="training batches to run")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    args = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="vae_memory_"))
    try:
        start = time.perf_counter()
        make_rollouts(root, args.frames)
        made = time.perf_counter() - start
        start = time.perf_counter()
        cmd = [
            sys.executable, str(ROOT / "03_train_vae.py"), "--data-dir", str(root), "--epochs", "1",
            "--max-iterations", str(args.iterations), "--test-frames", "0",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        ran = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(proc.returncode)
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        cache = sum(f.stat().st_size for f in (root / "vae_data" / "cache").glob("*.npy"))
        out = {
            "name": "vae_train_peak_rss",
            "frames": args.frames,
            "cache_gb": round(cache / 1e9, 2),
            "iterations": args.iterations,
            "peak_rss_mb": round(peak_kb / 1024, 1),
            "make_data_s": round(made, 1),
            "cache_and_train_s": round(ran, 1),
        }
        print(json.dumps(out))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
