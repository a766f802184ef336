"""lib/cli.py's argument types, and the one-line error a script gives for them."""

import argparse
import os

import pytest
from cli_helpers import one_line_error, run_here

from lib import cli


@pytest.mark.parametrize("text, value", [("0", 0.0), ("1.15", 1.15), ("2e-3", 0.002)])
def test_non_negative_float_accepts(text, value):
    assert cli.non_negative_float(text) == value


@pytest.mark.parametrize("text", ["-0.1", "nan", "inf", "x", ""])
def test_non_negative_float_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cli.non_negative_float(text)


@pytest.mark.parametrize(
    "script",
    ["04_train_rnn.py", "06_draw_rnn_result.py", "07_train_controller.py", "08_test_controller.py"],
)
def test_a_negative_temperature_is_one_line(script, tmp_path):
    line = one_line_error(run_here(script, "--temperature", "-1", "--data-dir", tmp_path))
    assert "--temperature: must be >= 0, got -1" in line


def test_check_backend(monkeypatch):
    from lib import parallel

    parallel.check_backend("local")
    with pytest.raises(parallel.BackendUnavailable, match="unknown backend 'mpi'"):
        parallel.check_backend("mpi")
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(parallel.BackendUnavailable, match="pip install -r requirements-ray.txt"):
        parallel.check_backend("ray")


@pytest.mark.parametrize("script", ["03_train_vae.py", "04_train_rnn.py"])
def test_run_flags_shared_by_the_training_scripts(script, tmp_path):
    out = run_here(script, "--help").stdout
    for flag in ("--resume", "--overwrite", "--snapshot-interval", "--max-iterations"):
        assert flag in out, flag
    line = one_line_error(run_here(script, "--resume", "--overwrite", "--data-dir", tmp_path))
    assert "--resume and --overwrite exclude each other" in line
    assert list(tmp_path.iterdir()) == []


def test_help_shows_each_default_once():
    p = cli.ArgumentParser()
    cli.add_out_arg(p, "x.json")
    p.add_argument("--n", type=int, default=3, help="a count")
    text = p.format_help()
    assert "(default: <data-dir>/results/x.json)" in text and "None" not in text
    assert "a count (default: 3)" in text


def test_results_paths():
    args = argparse.Namespace(data_dir="d", out=None)
    assert cli.results_paths(args, "x.json") == (
        os.path.join("d", "results"),
        os.path.join("d", "results", "x.json"),
    )
    args.out = "elsewhere/y.json"
    assert cli.results_paths(args, "x.json") == (os.path.join("d", "results"), "elsewhere/y.json")
