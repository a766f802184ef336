"""`make agent`'s plan (a dry run, `make -n`): every step in order, into the chosen folder,
resuming an interrupted step from its snapshot and skipping finished ones."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def plan(data_dir):
    proc = subprocess.run(
        ["make", "-n", "agent", f"AGENT_DIR={data_dir}", "PY=python3"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [ln for ln in proc.stdout.splitlines() if "agent step" in ln]


def script_lines(lines, script):
    return [ln for ln in lines if f"step {script}:" in ln]


def test_a_fresh_plan_runs_every_step_in_order_into_the_folder(tmp_path):
    lines = plan(tmp_path)
    steps = [ln.split("agent step ")[1].split(":")[0] for ln in lines]
    assert steps == [
        "01", "02", "03", "04", "diagnostics", "inputs", "07", "07dream", "check", "lookahead", "08"
    ]  # fmt: skip
    (head,) = script_lines(lines, "lookahead")
    assert (
        "train_lookahead.py --episodes 20000 --rounds 1 --heads 3" in head and "--overwrite" in head
    )
    assert (
        "probe_controller.py --teacher cautious_oracle --iterations 10 --data-dir"
        in script_lines(lines, "inputs")[0]
    )
    assert all(f"--data-dir {tmp_path}" in ln for ln in lines)
    assert "--overwrite" in script_lines(lines, "03")[0]
    assert "--object-weight 50" in script_lines(lines, "03")[0]
    assert "--spatial 8" in script_lines(lines, "03")[0]
    assert "--z-size" not in script_lines(lines, "03")[0]
    assert "--task-weight 1000" in script_lines(lines, "03")[0]
    assert "--labels oracle" in script_lines(lines, "01")[0]
    (eight,) = script_lines(lines, "08")
    assert "--episodes 500" in eight and "--n-humans 8" in eight and "controller_dream" in eight
    assert eight.count("08_test_controller.py --planner") == 4  # 5 and 8 people (echoed, then run)
    assert "--outcome-head" in script_lines(lines, "04")[0]
    assert "--episodes 3000" in script_lines(lines, "02")[0]
    # M's task head did not help (docs/experiments.md): the paper's M, unlabelled episodes
    assert "--labels" not in script_lines(lines, "02")[0]
    assert "--task-weight 0 " in script_lines(lines, "04")[0]
    (c,) = script_lines(lines, "07")
    assert (
        "--imitate cautious_oracle --imitate-iterations 10" in c
        and "--eval-episodes 200" in c
        and "--sigma 0.02" in c
    )
    assert "--imitate" not in script_lines(lines, "07dream")[0]


def test_spatial_0_gives_the_dense_z_of_agent_z_size(tmp_path):
    proc = subprocess.run(
        ["make", "-n", "agent", f"AGENT_DIR={tmp_path}", "PY=python3", "AGENT_SPATIAL=0"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    (v,) = [ln for ln in proc.stdout.splitlines() if "agent step 03:" in ln]
    assert "--z-size 128" in v and "--spatial" not in v


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
