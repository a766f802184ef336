"""`make agent`'s plan (a dry run, `make -n`): every step in order, into the chosen folder,
resuming an interrupted step from its snapshot and skipping finished ones."""

import os
import re
import shlex
import shutil
import subprocess

import pytest
from cli_helpers import script_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def plan(data_dir, recipe="agent"):
    folder = "AGENT_DIR" if recipe == "agent" else "PAPER_DIR"
    proc = subprocess.run(
        ["make", "-n", recipe, f"{folder}={data_dir}", "PY=python3"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [ln for ln in proc.stdout.splitlines() if f"{recipe} step" in ln]


def script_lines(lines, script):
    return [ln for ln in lines if f"step {script}:" in ln]


STEPS = ["01", "02", "03", "04", "diagnostics", "inputs", "07", "07dream", "check",
         "lookahead", "08"]  # fmt: skip
# The scripts each step runs, in order (`&&` chains).
SCRIPTS = {
    "01": ["01_generate_vae_data.py"],
    "02": ["02_generate_rnn_data.py"],
    "03": ["03_train_vae.py"],
    "04": ["04_train_rnn.py"],
    "diagnostics": [
        "05_draw_vae_result.py",
        "06_draw_rnn_result.py",
        "diagnostics/probe_features.py",
    ],
    "inputs": ["diagnostics/probe_controller.py"],
    "07": ["07_train_controller.py"],
    "07dream": ["07_train_controller.py"],
    "check": ["02_generate_rnn_data.py", "diagnostics/check_world_model.py"],
    "lookahead": ["07b_train_lookahead.py"],
    "08": ["08_test_controller.py"] * 3,
}


def commands(line):
    """[(script, argv)] of a planned step's echoed command line."""
    echoed = re.search(r'== \w+ step [^:]+: (.*?)"; s=', line).group(1)
    out = []
    for part in echoed.split("&&"):
        words = shlex.split(part)
        assert words[0] == "python3", part
        out.append((words[1], words[2:]))
    return out


def test_a_fresh_plan_runs_every_step_in_order_with_flags_its_scripts_accept(tmp_path):
    """Every step once, in order, each running its scripts into the chosen folder with
    arguments that the script's own parser accepts (so a renamed or removed flag
    breaks this test, not a two-hour run), starting afresh (--overwrite) where a step
    can resume."""
    lines = plan(tmp_path)
    assert [ln.split("agent step ")[1].split(":")[0] for ln in lines] == STEPS
    for line in lines:
        step = line.split("agent step ")[1].split(":")[0]
        cmds = commands(line)
        assert [c[0] for c in cmds] == SCRIPTS[step], line
        for script, argv in cmds:
            args = script_module(script).parse_args(argv)  # exits on a bad flag
            if step == "check" and script.startswith("02"):  # M's held-out episodes
                assert args.data_dir == str(tmp_path / "heldout") and args.seed != 0
                continue
            if step == "check":
                assert args.held_out == str(tmp_path / "heldout")
            assert args.data_dir == str(tmp_path), (step, script)
            assert not getattr(args, "resume", False), (step, script)  # a fresh plan
    trained = ["03", "04", "07", "07dream", "lookahead"]
    for step in trained:
        (line,) = script_lines(lines, step)
        assert "--overwrite" in line and "--resume" not in line, step
    # C is trained twice, into two names: the imitation-started C and the dream's.
    names = [script_module("07_train_controller.py").parse_args(commands(ln)[0][1]).name
             for ln in script_lines(lines, "07") + script_lines(lines, "07dream")]  # fmt: skip
    assert names == ["controller", "controller_dream"]
    assert (
        script_module("07_train_controller.py")
        .parse_args(commands(script_lines(lines, "07dream")[0])[0][1])
        .dream
    )
    # 08 scores the linear C with the planner, then with 8 people, then the dream's C.
    outs = [script_module("08_test_controller.py").parse_args(argv)
            for _, argv in commands(script_lines(lines, "08")[0])]  # fmt: skip
    assert [o.planner for o in outs] == [True, True, False]
    assert outs[1].n_humans == 8 and outs[2].controller == "controller_dream"


def test_spatial_0_gives_the_dense_z_of_agent_z_size(tmp_path):
    proc = subprocess.run(
        ["make", "-n", "agent", f"AGENT_DIR={tmp_path}", "PY=python3", "AGENT_SPATIAL=0"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    (v,) = [ln for ln in proc.stdout.splitlines() if "agent step 03:" in ln]
    assert "--z-size 128" in v and "--spatial" not in v


@pytest.mark.parametrize("recipe", ["agent", "paper"])
def test_agent_map_side_sizes_vs_map(tmp_path, recipe):
    folder = "AGENT_DIR" if recipe == "agent" else "PAPER_DIR"
    for side in (6, 14):
        proc = subprocess.run(
            ["make", "-n", recipe, f"{folder}={tmp_path}", "PY=python3", f"AGENT_MAP_SIDE={side}"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        (v,) = [ln for ln in proc.stdout.splitlines() if f"{recipe} step 03:" in ln]
        ((_, argv),) = commands(v)
        args = script_module("03_train_vae.py").parse_args(argv)
        assert args.spatial == 8 and args.map_side == side


@pytest.mark.parametrize(
    "step, data_step, weight, labels",
    [("03", "01", "AGENT_TASK_WEIGHT=0", None), ("04", "02", "AGENT_M_TASK_WEIGHT=1", "oracle")],
)
def test_a_task_weight_labels_the_data_its_model_reads(tmp_path, step, data_step, weight, labels):
    proc = subprocess.run(
        ["make", "-n", "agent", f"AGENT_DIR={tmp_path}", "PY=python3", weight],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = proc.stdout.splitlines()
    (data,) = [ln for ln in lines if f"agent step {data_step}:" in ln]
    (model,) = [ln for ln in lines if f"agent step {step}:" in ln]
    assert f"--task-weight {weight.split('=')[1]} " in model
    if labels is None:
        assert "--labels" not in data
    else:
        assert f"--labels {labels}" in data


def test_an_interrupted_step_resumes_and_finished_steps_are_skipped(tmp_path):
    stamps = tmp_path / ".agent"
    stamps.mkdir()
    for step in ("01", "02"):
        (stamps / f"{step}.done").touch()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "vae_snapshot.npz").touch()  # 03 was interrupted
    lines = plan(tmp_path)
    assert not script_lines(lines, "01") and not script_lines(lines, "02")
    assert "--resume" in script_lines(lines, "03")[0]
    assert "--overwrite" in script_lines(lines, "04")[0]
    (tmp_path / "models" / "lookahead_snapshot.npz").touch()  # so was the look-ahead head
    assert "--resume" in script_lines(plan(tmp_path), "lookahead")[0]


def test_m_is_the_map_m_unless_the_flags_ask_for_the_papers_dense_m(tmp_path):
    """AGENT_M_FLAGS picks M's architecture: by default the map M on V's means, trained on
    its own open loop; `AGENT_M_FLAGS=--residual` the paper's dense M (a residual MDN-LSTM)."""
    parse = script_module("04_train_rnn.py").parse_args

    def m_args(*overrides):
        proc = subprocess.run(
            ["make", "-n", "agent", f"AGENT_DIR={tmp_path}", "PY=python3", *overrides],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        (line,) = [ln for ln in proc.stdout.splitlines() if "agent step 04:" in ln]
        ((_, argv),) = commands(line)
        return parse(argv)

    default = m_args()
    assert (default.arch, default.z_source, default.residual) == ("map", "mean", False)
    assert default.rollout_steps > 0 and default.outcome_head
    dense = m_args("AGENT_M_FLAGS=--residual", "AGENT_M_EPOCHS=20")
    assert (dense.arch, dense.z_source, dense.residual, dense.epochs) == (
        "lstm",
        "sample",
        True,
        20,
    )
    assert dense.rollout_steps == 0 and dense.outcome_head


def test_the_papers_recipe_takes_no_label_from_the_true_state(tmp_path):
    """`make paper`: its steps in order, each accepted by its script's parser, into its
    folder, afresh; no step reads a label from the true state: no teacher's labels for
    V or M, no imitation, no look-ahead heads (trained on simulator copies); the dream's
    C is the dream's last, not the room's pick; 08 plans in M's dream."""
    lines = plan(tmp_path, "paper")
    steps = [ln.split("paper step ")[1].split(":")[0] for ln in lines]
    assert steps == ["01", "02", "03", "04", "04b", "07", "07dream", "07pixel", "check", "08"]
    parsed = {}
    for line, step in zip(lines, steps):
        for script, argv in commands(line):
            args = script_module(script).parse_args(argv)
            parsed.setdefault(step, []).append(args)
            assert args.data_dir in (str(tmp_path), str(tmp_path / "heldout")), (step, script)
            assert not getattr(args, "resume", False), (step, script)
            assert getattr(args, "labels", None) is None, (step, script)
            assert not getattr(args, "task_weight", 0), (step, script)
            assert not getattr(args, "imitate", None), (step, script)
            assert "07b" not in script and "probe_controller" not in script
    (real,), (dream,), (pixel,) = parsed["07"], parsed["07dream"], parsed["07pixel"]
    assert not real.dream and real.keep == "best" and real.name == "controller"
    assert dream.dream and dream.keep == "last" and dream.name == "controller_dream"
    assert not dream.mover and pixel.dream and pixel.mover and pixel.keep == "last"
    assert pixel.name == "controller_pixel" and parsed["04b"][0].motion == "splat"
    assert parsed["check"][1].trained == ["controller", "controller_dream", "controller_pixel"]
    tests = parsed["08"]
    assert all(t.planner and t.plan_with == "return" for t in tests)
    assert [(t.controller, t.n_humans) for t in tests] == [
        ("controller", 5), ("controller", 8), ("controller_dream", 5), ("controller_dream", 8),
        ("controller_pixel", 5), ("controller_pixel", 8),
    ]  # fmt: skip
    # interrupted in 04: 01 to 03 are skipped, 04 resumes
    stamps = tmp_path / ".paper"
    stamps.mkdir()
    for step in ("01", "02", "03"):
        (stamps / f"{step}.done").touch()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "rnn_dream_snapshot.npz").touch()
    lines = plan(tmp_path, "paper")
    assert lines[0].split("paper step ")[1].startswith("04:") and "--resume" in lines[0]
