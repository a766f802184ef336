"""Running the numbered scripts from tests, and checking their one-line errors."""

import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bad_flags(script):
    """`script`'s table in tests/bad_flags.toml: a list of (flags, a piece of the error
    line), the flags split as a shell would split them."""
    with open(os.path.join(ROOT, "tests", "bad_flags.toml"), "rb") as f:
        table = tomllib.load(f)[script]
    return [(shlex.split(flags), needle) for flags, needle in table.items()]


def _tree(root):
    """Every file below `root`, with its size and modification time."""
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(folder, f))
            out[os.path.relpath(os.path.join(folder, f), root)] = (st.st_size, st.st_mtime_ns)
    return out


def assert_refused(script, flags, needle, data_dir):
    """`script --data-dir data_dir` with `flags` fails with one error line holding
    `needle`, and writes, changes and removes nothing below `data_dir`."""
    before = _tree(data_dir)
    line = one_line_error(run_here(script, *flags, "--data-dir", data_dir))
    assert needle in line, (flags, line)
    assert _tree(data_dir) == before, flags


def run(script, *args, check=True, timeout=600):
    """Runs `python <script> <args>` in the repository root; with `check`, a
    non-zero exit fails the test with the script's output."""
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


_SCRIPTS = {}


def script_module(script):
    """The numbered script `script` imported as a module (once per test run)."""
    if script not in _SCRIPTS:
        name = "script_" + os.path.splitext(script)[0].replace("/", "_")
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, script))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[script] = module
    return _SCRIPTS[script]


def run_here(script, *args):
    """`run(script, *args, check=False)` in this process: the script's `main(argv)`
    from the repository root with its output captured, without paying a new
    interpreter and Chainer's import (1-2 s) for each refused flag. An exception
    other than SystemExit propagates, failing the test with its traceback, as the
    "no traceback" contract asks. Returns a `subprocess.CompletedProcess`."""
    module = script_module(script)
    out, err = io.StringIO(), io.StringIO()
    argv0, code = sys.argv[0], 0
    sys.argv[0] = os.path.join(ROOT, script)  # the prog of its messages
    try:
        with (
            contextlib.chdir(ROOT),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                module.main([str(a) for a in args])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv[0] = argv0
    return subprocess.CompletedProcess(
        [script, *map(str, args)], code, out.getvalue(), err.getvalue()
    )


def assert_same_arrays(path_a, path_b, skip=()):
    """Two .npz files hold the same arrays, bit for bit (weights, optimizer moments,
    CMA-ES state, a snapshot's run counters), apart from the keys in `skip`."""
    import numpy as np

    with np.load(path_a) as a, np.load(path_b) as b:
        keys = sorted(k for k in a.files if k not in skip)
        assert keys == sorted(k for k in b.files if k not in skip) and keys, (a.files, b.files)
        for k in keys:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{path_a}: {k}")


def make_tiny_models(root, rollouts=3, episodes=6, rnn_epochs=1, vae_batch=64):
    """Tiny data (40-step episodes) and models in `root`: V with z 8, and M in dream
    mode (hidden 16, reward and done heads). Returns `root`."""
    common = ["--max-steps", 40, "--workers", 1, "--data-dir", root]
    run("01_generate_vae_data.py", "--rollouts", rollouts, "--testrollouts", 1, *common)
    run("02_generate_rnn_data.py", "--episodes", episodes, "--testepisodes", 2, *common)
    run("03_train_vae.py", "--epochs", 1, "--batch-size", vae_batch, "--z-size", 8,
        "--data-dir", root)  # fmt: skip
    run("04_train_rnn.py", "--mode", "dream", "--epochs", rnn_epochs, "--batch-size", 4,
        "--hidden", 16, "--data-dir", root)  # fmt: skip
    return root


# A tqdm progress bar: its elapsed-time bracket, as "[00:01<00:06, ..." or "[00:00, ?ep/s]".
_PROGRESS = re.compile(r"\[\d+:\d\d[<,]")


def one_line_error(proc):
    """The `error:` line of a failed run: asserts a non-zero exit and that stderr,
    progress bars aside, is exactly that one line (no traceback, no warning, no
    other noise). Each line counts as a terminal shows it: its last carriage-return
    segment."""
    assert proc.returncode != 0
    lines = [ln.split("\r")[-1].strip() for ln in proc.stderr.splitlines()]
    lines = [ln for ln in lines if ln and not _PROGRESS.search(ln)]
    assert len(lines) == 1 and ": error: " in lines[0], proc.stderr
    return lines[0]


def assert_events_match_log(logdir, csv_path, images=()):
    """The run's TensorBoard events (`lib.tensorboard_log`) hold every numeric column of
    its CSV log, tagged `<run>/<column>`, at the log's counter, to float32 precision,
    and no other point; the `images` tags have one picture per row; the `batch/` series
    (in `batches/`) climb one point per step. Returns the events read, by column (and
    for the batch series by loss), without the run's prefix."""
    import csv

    import numpy as np

    from lib.tensorboard_log import BATCHES, read_events

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    counter = next(iter(rows[0]))
    prefix = f"{os.path.basename(os.path.normpath(str(logdir)))}/"
    events = read_events(logdir)
    for kind in ("scalars", "images"):
        assert all(tag.startswith(prefix) for tag in events[kind]), events[kind].keys()
        events[kind] = {tag[len(prefix) :]: v for tag, v in events[kind].items()}
    expected = {}
    for row in rows:
        for key, text in row.items():
            if key != counter and text not in ("", None):
                with contextlib.suppress(ValueError):
                    expected.setdefault(key, []).append((int(row[counter]), float(text)))
    expected = {k: v for k, v in expected.items() if all(np.isfinite(x) for _, x in v)}
    assert sorted(events["scalars"]) == sorted(expected), (events["scalars"].keys(), expected)
    for tag, points in expected.items():
        got = events["scalars"][tag]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        np.testing.assert_allclose([v for _, v in got], [v for _, v in points], rtol=2e-5,
                                   atol=1e-6, err_msg=tag)  # fmt: skip
    steps = [int(r[counter]) for r in rows]
    for tag in images:
        assert events["images"][tag] == steps, tag
    batches = read_events(os.path.join(logdir, BATCHES))["scalars"]
    assert all(tag.startswith(prefix + "batch/") for tag in batches), batches.keys()
    batches = {tag[len(prefix) :]: v for tag, v in batches.items()}
    for tag, points in batches.items():
        at = [s for s, _ in points]
        assert at == sorted(set(at)), tag  # each step once, in order: no stale points
    return events, batches
