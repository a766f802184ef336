"""benchmarks/rounds.py: alternating rounds and median ratios, on fake benchmark commands."""

import json
import shlex
import sys

from cli_helpers import one_line_error, run, run_here


def fake(rates: dict) -> str:
    """A shell command printing one JSON line per workload, plus a stray line."""
    lines = [json.dumps({"name": k, "per_sec": v}) for k, v in rates.items()] + ["warm-up done"]
    return f"{shlex.quote(sys.executable)} -c " + shlex.quote(
        "; ".join(f"print({line!r})" for line in lines)
    )


def test_rounds_and_median_ratios():
    proc = run(
        "benchmarks/rounds.py", "--rounds", 2, "--reference", "ref",
        "--pair", "env=frame",
        "--side", "new=" + fake({"a": 30.0, "env": 100.0}),
        "--side", "ref=" + fake({"a": 10.0, "frame": 4.0}),
    )  # fmt: skip
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    figures = [r for r in rows if "round" in r]
    assert len(figures) == 8 and {r["round"] for r in figures} == {1, 2}
    assert [r["side"] for r in figures[:4]] == ["new", "new", "ref", "ref"]  # alternating
    ratios = {r["name"]: r for r in rows if "ratio" in r}
    assert ratios["a"]["median"] == 3.0 and ratios["a"]["rounds"] == [3.0, 3.0]
    assert ratios["env"]["median"] == 25.0
    assert ratios["a"]["ratio"] == "new / ref"


def test_bad_arguments_are_one_line():
    line = one_line_error(run_here("benchmarks/rounds.py", "--side", "x"))
    assert "NAME=COMMAND" in line
    line = one_line_error(run_here("benchmarks/rounds.py", "--side", "a=true", "--reference", "b"))
    assert "--reference 'b'" in line
    proc = run("benchmarks/rounds.py", "--side", "a=exit 3", check=False)
    assert proc.returncode != 0 and "`exit 3` failed (3)" in proc.stderr
