"""benchmarks/bench_contention.py: each workload alone and beside a looping partner, on a
fake benchmark whose rate drops while a partner runs."""

import json
import os

from cli_helpers import ROOT, one_line_error, run, run_here

FAKE = os.path.join(ROOT, "tests", "fake_bench.py")


def test_solo_and_beside_rates_and_their_ratio(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_BENCH_MARK", str(tmp_path / "partner_running"))
    proc = run(
        "benchmarks/bench_contention.py", "--bench", FAKE, "--rounds", 2, "--warmup", 0.3,
        "--partner-seconds", 0.3, "--threads", 1, "w1", "vae_train",
    )  # fmt: skip
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["name"] for r in rows] == ["w1", "vae_train"]
    for r in rows:
        assert (r["solo_per_sec"], r["per_sec"], r["ratio"]) == (100.0, 40.0, 0.4)
        assert r["rounds"] == 2 and r["threads"] == 1 and r["partner_ratio"] == 1.0
    assert [r["partner"] for r in rows] == ["vae_train", "rnn_train"]  # V's beside M's
    assert not (tmp_path / "partner_running").exists()  # every partner was stopped


def test_bad_arguments_get_one_line():
    for args, words in (
        (["--rounds", "0"], "--rounds"),
        (["--threads", "0"], "--threads"),
        (["--partner-seconds", "0"], "--partner-seconds"),
        (["--bench", "/no/such.py"], "no such file"),
    ):
        line = one_line_error(run_here("benchmarks/bench_contention.py", *args))
        assert words in line, line


def test_bench_models_forever_prints_each_rounds_seconds_per_call(monkeypatch, capsys):
    """`bench_models.py --forever`, the partner's loop: each round of n calls prints its
    seconds per call, and the rounds go on (here until the step gives up)."""
    from cli_helpers import script_module

    bm = script_module("benchmarks/bench_models.py")
    monkeypatch.setitem(bm.RUN, "forever", True)
    calls = []

    def step():
        calls.append(1)
        if len(calls) > 2 + 3 * 4:  # warm-up, then three rounds of four
            raise StopIteration

    try:
        bm.bench(step, 4)
    except StopIteration:
        pass
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(r["sec_per_call"] >= 0 for r in rows)
    assert bm.parse_args(["--forever", "ctrl_b1"]).forever
