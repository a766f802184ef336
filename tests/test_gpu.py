"""`--gpu 0` in 03-08 and bench_models.py, against the CPU at tiny sizes.

Marked `gpu`; skipped where CuPy or a CUDA GPU is missing (`pytest -m gpu` runs only
these). One CPU run of 01-04 makes the data and models; each GPU step then runs on a
copy of them, and its losses, images' statistics and agent returns are compared with
the CPU's within float tolerance (the GPU runs Chainer's and CuPy's ops, the CPU this
project's own kernels, so results agree to rounding, not bit for bit).
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from cli_helpers import make_tiny_models, run

from lib import devices


def _gpu_reason():
    try:
        devices.select_device(0)
    except devices.DeviceUnavailable as e:
        return str(e)
    return None


REASON = _gpu_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(REASON is not None, reason=f"no GPU ({(REASON or '').split(':')[0]})"),
]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_log(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cpu_dir(tmp_path_factory):
    """Data and models made on the CPU: 01, 02, 03 (1 epoch), 04 (dream, 2 epochs)."""
    d = tmp_path_factory.mktemp("cpu") / "data"
    return make_tiny_models(d, rollouts=6, episodes=10, rnn_epochs=2, vae_batch=32)


@pytest.fixture
def gpu_dir(cpu_dir, tmp_path):
    """A copy of the CPU's data and models for a GPU step to read and write."""
    d = tmp_path / "data"
    shutil.copytree(cpu_dir, d)
    return d


def test_03_trains_on_the_gpu_with_the_cpus_losses(cpu_dir, gpu_dir):
    args = ["--epochs", 1, "--batch-size", 32, "--z-size", 8, "--overwrite"]
    run("03_train_vae.py", *args, "--gpu", 0, "--data-dir", gpu_dir)
    cpu = read_log(cpu_dir / "models" / "vae_log.csv")[-1]
    gpu = read_log(gpu_dir / "models" / "vae_log.csv")[-1]
    for key in ("train_loss", "test_loss", "test_rec", "test_kl"):
        assert float(gpu[key]) == pytest.approx(float(cpu[key]), rel=1e-3), key


def test_04_trains_on_the_gpu_with_the_cpus_losses(cpu_dir, gpu_dir):
    args = ["--mode", "dream", "--epochs", 2, "--batch-size", 4, "--hidden", 16, "--overwrite"]
    run("04_train_rnn.py", *args, "--gpu", 0, "--data-dir", gpu_dir)
    cpu = read_log(cpu_dir / "models" / "rnn_dream_log.csv")
    gpu = read_log(gpu_dir / "models" / "rnn_dream_log.csv")
    assert len(cpu) == len(gpu) == 2
    for c, g in zip(cpu, gpu):
        for key in ("train_loss", "test_nll", "test_reward_mse"):
            assert float(g[key]) == pytest.approx(float(c[key]), rel=1e-3, abs=1e-5), key


def test_05_and_06_draw_on_the_gpu_as_on_the_cpu(cpu_dir, gpu_dir):
    cpu_out = cpu_dir.parent / "cpu_draw"
    shutil.copytree(cpu_dir, cpu_out)
    for d, gpu in ((cpu_out, -1), (gpu_dir, 0)):
        run("05_draw_vae_result.py", "--frames", 4, "--rows", 1, "--dims", 2, "--gpu", gpu,
            "--data-dir", d)  # fmt: skip
        run("06_draw_rnn_result.py", "--mode", "dream", "--dream-steps", 6, "--gpu", gpu,
            "--data-dir", d)  # fmt: skip
    cpu = json.loads((cpu_out / "results" / "vae_summary.json").read_text())
    gpu = json.loads((gpu_dir / "results" / "vae_summary.json").read_text())
    assert gpu["reconstruction_sse_per_frame"] == pytest.approx(
        cpu["reconstruction_sse_per_frame"], rel=1e-3
    )
    np.testing.assert_allclose(gpu["kl_per_dim"], cpu["kl_per_dim"], rtol=1e-3, atol=1e-4)
    cpu = json.loads((cpu_out / "results" / "rnn_dream_summary.json").read_text())
    gpu = json.loads((gpu_dir / "results" / "rnn_dream_summary.json").read_text())
    # tau 0: one-step and open-loop predictions are deterministic
    for key in ("onestep_sq_error", "openloop_sq_error"):
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-3, abs=1e-5), key


def _both_devices(cpu_dir):
    """(name, V, M, M's sidecar) on the CPU and on GPU 0, from the CPU's models."""
    from lib.models import saved_models

    out = []
    for name, gpu in (("cpu", -1), ("gpu", 0)):
        dev = devices.select_device(gpu)
        vae, side = saved_models.load_vae(str(cpu_dir), dev)
        rnn, rside = saved_models.load_rnn(str(cpu_dir), "dream", side["config"]["z_size"], dev)
        out.append((name, vae, rnn, rside))
    return out


def test_the_agent_acts_on_the_gpu_as_on_the_cpu(cpu_dir):
    """WorldModelsAgent (V encode, C, M step) on both devices, the same frames, 5 steps."""
    from lib.control.agent import WorldModelsAgent
    from lib.env import socnavenv as sn
    from lib.models.controller import n_params

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8) for _ in range(5)]
    actions = {}
    for name, vae, rnn, _ in _both_devices(cpu_dir):
        params = np.random.default_rng(1).normal(0, 0.5, (3, n_params(8, 16))).astype(np.float32)
        for temperature in (0.0, 1.0):
            agent = WorldModelsAgent(6, vae, rnn, params, lambda k: k % 3, temperature)
            agent.reset(np.arange(6), np.arange(6) + 10, episodes=np.arange(6))
            sim = sn.SocNavSim(6, sn.EnvConfig())
            sim.active[:] = True
            sim.active[4] = False  # a finished slot is skipped
            steps = []
            for images in frames:
                steps.append(agent.act(sim, images))
            actions[name, temperature] = np.array(steps)
            assert isinstance(actions[name, temperature], np.ndarray)
    for temperature in (0.0, 1.0):
        np.testing.assert_allclose(
            actions["gpu", temperature], actions["cpu", temperature], rtol=1e-4, atol=1e-5
        )
        assert np.all(actions["gpu", temperature][:, 4] == 0)


def test_dreams_on_the_gpu_match_the_cpu(cpu_dir):
    from lib.control.agent import dream_rollouts
    from lib.models import saved_models
    from lib.models.controller import n_params

    out = {}
    for name, gpu in (("cpu", -1), ("gpu", 0)):
        rnn, side = saved_models.load_rnn(str(cpu_dir), "dream", 8, devices.select_device(gpu))
        params = np.random.default_rng(1).normal(0, 0.5, (2, n_params(8, 16))).astype(np.float32)
        z0 = np.random.default_rng(2).standard_normal((8, 8)).astype(np.float32)
        which = np.arange(8) % 2
        out[name] = dream_rollouts(
            rnn, params, which, z0, 0.0, np.random.default_rng(3), 40,
            done_pos_weight=side.get("done_pos_weight") or 1.0,
        )  # fmt: skip
    np.testing.assert_allclose(out["gpu"][0], out["cpu"][0], rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(out["gpu"][1], out["cpu"][1])


@pytest.mark.parametrize("dream", [True, False], ids=["dream", "real-env"])
def test_07_and_08_run_on_the_gpu(cpu_dir, gpu_dir, dream):
    common = ["--epochs", 2, "--popsize", 4, "--trials", 2, "--eval-every", 1,
              "--eval-episodes", 4, "--max-steps", 40, "--overwrite"]  # fmt: skip
    flags = ["--dream", "--temperature", 0] if dream else []
    cpu_out = gpu_dir.parent / "cpu_07"
    shutil.copytree(cpu_dir, cpu_out)
    run("07_train_controller.py", *common, *flags, "--workers", 1, "--data-dir", cpu_out)
    run("07_train_controller.py", *common, *flags, "--gpu", 0, "--data-dir", gpu_dir)
    cpu = read_log(cpu_out / "models" / "controller_log.csv")
    gpu = read_log(gpu_dir / "models" / "controller_log.csv")
    assert [r["generation"] for r in gpu] == [r["generation"] for r in cpu] == ["1", "2"]
    if dream:
        # The first generation's candidates are the same on both (same seed), and a
        # dream at tau 0 is deterministic: fitness agrees to rounding unless a dream
        # ends a step apart.
        assert float(gpu[0]["mean"]) == pytest.approx(float(cpu[0]["mean"]), abs=0.05)
    else:
        # In the real env an episode's outcome can flip on a rounding difference
        # (collision or not), so only the range is checked; the agent's actions are
        # compared step by step in test_the_agent_acts_on_the_gpu_as_on_the_cpu.
        for row in gpu:
            assert -1.6 <= float(row["worst"]) <= float(row["mean"]) <= float(row["best"]) <= 1.1
    proc = run("08_test_controller.py", "--episodes", 4, "--record", 0, "--max-steps", 40,
               "--gpu", 0, "--data-dir", gpu_dir)  # fmt: skip
    report = json.loads((gpu_dir / "results" / "test_controller.json").read_text())
    assert report["world_models"]["episodes"] == 4
    assert "| world_models |" in proc.stdout


def test_bench_models_runs_on_the_gpu():
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_models.py", "--gpu", "0", "dream_b1024", "rnn_train"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["name"] for r in lines] == ["dream_b1024", "rnn_train"]
    assert all(r["device"] == "cuda:0" and r["per_sec"] > 0 for r in lines)


def test_the_planner_plans_on_the_gpu_as_on_the_cpu(cpu_dir):
    """PlannerAgent (K candidates rolled through M with CEM) on both devices: the same
    frames give the same actions (its noise is drawn on the host and sent)."""
    from lib.control.dream_planner import PlannerAgent, PlanSettings
    from lib.env import socnavenv as sn
    from lib.models.controller import n_params

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8) for _ in range(4)]
    params = np.random.default_rng(1).normal(0, 0.5, (1, n_params(8, 16))).astype(np.float32)
    actions, replaced = {}, {}
    for name, vae, rnn, side in _both_devices(cpu_dir):
        settings = PlanSettings(horizon=5, candidates=16, cem_iters=2, margin=0.0,
                                done_pos_weight=side.get("done_pos_weight") or 1.0)  # fmt: skip
        agent = PlannerAgent(4, vae, rnn, params, settings)
        agent.reset(np.arange(4), np.arange(4) + 20, episodes=np.arange(4))
        sim = sn.SocNavSim(4, sn.EnvConfig())
        sim.active[:] = True
        actions[name] = np.array([agent.act(sim, images) for images in frames])
        replaced[name] = agent.replaced_fraction
    assert isinstance(actions["gpu"], np.ndarray)
    np.testing.assert_allclose(actions["gpu"], actions["cpu"], rtol=1e-3, atol=1e-4)
    assert replaced["gpu"] == replaced["cpu"] > 0  # the plan did replace C's actions


def test_dagger_fits_the_same_c_on_the_gpu(cpu_dir):
    """TeacherLabels and DAgger (07 --imitate) on both devices: the same episodes
    labelled, the same C fitted (its features [z, h] come from V and M on each)."""
    from lib.control import imitation
    from lib.env import socnavenv as sn

    config = sn.EnvConfig(max_steps=30)
    fitted, history = {}, {}
    for name, vae, rnn, _ in _both_devices(cpu_dir):
        fitted[name], rows = imitation.dagger(vae, rnn, "greedy", config, 0, 2, 4)
        history[name] = [(r.steps, r.episodes) for r in rows]
    assert history["gpu"] == history["cpu"]
    # The ridge solve amplifies the devices' float rounding of [z, h] (about 1e-6) to
    # about 1e-2 in C on so few steps; a wrong feature would move it by its own size.
    np.testing.assert_allclose(
        fitted["gpu"], fitted["cpu"], atol=0.02 * np.abs(fitted["cpu"]).max()
    )


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory):
    """01 and 02 with oracle labels and 03 (z 8), for the task heads."""
    d = tmp_path_factory.mktemp("labelled") / "data"
    common = ["--max-steps", 40, "--workers", 1, "--labels", "oracle", "--data-dir", d]
    run("01_generate_vae_data.py", "--rollouts", 6, "--testrollouts", 1, *common)
    run("02_generate_rnn_data.py", "--episodes", 10, "--testepisodes", 2, *common)
    run("03_train_vae.py", "--epochs", 1, "--batch-size", 32, "--z-size", 8, "--data-dir", d)
    return d


@pytest.mark.parametrize("script", ["03", "04"])
def test_the_task_heads_train_on_the_gpu_with_the_cpus_losses(labelled_dir, tmp_path, script):
    """03 and 04 with --task-weight (V's head on z, M's on [z, h]) on both devices."""
    if script == "03":
        cmd = ["03_train_vae.py", "--epochs", 1, "--batch-size", 32, "--z-size", 8,
               "--task-weight", 100]  # fmt: skip
        log, keys = "vae_log.csv", ("train_loss", "train_task", "test_task", "test_task_r2")
    else:
        cmd = ["04_train_rnn.py", "--mode", "dream", "--residual", "--outcome-head",
               "--epochs", 2, "--batch-size", 4, "--hidden", 16, "--task-weight", 1]  # fmt: skip
        log, keys = "rnn_dream_log.csv", ("train_loss", "train_task_loss", "test_task_r2")
    rows = {}
    for name, gpu in (("cpu", -1), ("gpu", 0)):
        d = tmp_path / name
        shutil.copytree(labelled_dir, d)
        run(*cmd, "--overwrite", "--gpu", gpu, "--data-dir", d)
        rows[name] = read_log(d / "models" / log)
    for c, g in zip(rows["cpu"], rows["gpu"]):
        for key in keys:
            assert float(g[key]) == pytest.approx(float(c[key]), rel=1e-3, abs=1e-4), key


def test_the_lookahead_planner_and_train_lookahead_run_on_the_gpu(cpu_dir, tmp_path):
    """LookaheadPlanner (an ensemble's risk over C's action and a grid) on both devices:
    the same frames give the same actions; 07b_train_lookahead.py trains heads with --gpu."""
    from lib.control.lookahead_planner import LookaheadPlanner, LookaheadSettings
    from lib.env import socnavenv as sn
    from lib.models.controller import n_params
    from lib.models.lookahead_heads import make_head, pixel_size

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8) for _ in range(4)]
    params = np.random.default_rng(1).normal(0, 0.5, (1, n_params(8, 16))).astype(np.float32)
    np.random.seed(2)
    # An ensemble reading the frames' centre too, through its conv trunk, as trained.
    config = {"z_size": 8, "hidden_size": 16, "width": 8, "pixels": pixel_size(64), "trunk": "conv"}
    head_cpu = make_head(2, **config)
    for member in head_cpu:
        member.out.b.array[...] = 0.0
    actions, replaced = {}, {}
    for name, vae, rnn, _ in _both_devices(cpu_dir):
        head = make_head(2, **config)
        head.copyparams(head_cpu)
        head.to_device(rnn.device)
        agent = LookaheadPlanner(4, vae, rnn, params, head, LookaheadSettings(threshold=0.3))
        agent.reset(np.arange(4), np.arange(4) + 20, episodes=np.arange(4))
        sim = sn.SocNavSim(4, sn.EnvConfig())
        sim.active[:] = True
        actions[name] = np.array([agent.act(sim, images) for images in frames])
        replaced[name] = agent.replaced_fraction
    np.testing.assert_allclose(actions["gpu"], actions["cpu"], rtol=1e-3, atol=1e-4)
    assert replaced["gpu"] == replaced["cpu"] > 0
    data = tmp_path / "d"
    shutil.copytree(cpu_dir, data)
    if not (data / "models" / "controller.npz").exists():  # cpu_dir has V and M only
        run("07_train_controller.py", "--epochs", 1, "--popsize", 4, "--trials", 1,
            "--max-steps", 20, "--workers", 1, "--data-dir", data)  # fmt: skip
    run("07b_train_lookahead.py", "--episodes", 8, "--rounds", 2, "--epochs", 1, "--width", 8,
        "--n-envs", 4, "--gpu", 0, "--overwrite", "--data-dir", data)  # fmt: skip
    assert (data / "models" / "lookahead.npz").exists()


def test_the_map_m_steps_and_learns_on_the_gpu_as_on_the_cpu():
    """lib.models.map_rnn.MapRNN (its fused sequence node and its step) on CuPy gives
    the CPU's loss, weight gradients and step outputs within float tolerance."""
    import chainer

    from lib.models.map_rnn import MapRNN
    from lib.models.mdn_rnn import MDNRNNLoss

    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 6, 72)).astype(np.float32)
    a = rng.uniform(-1, 1, (3, 6, 2)).astype(np.float32)
    z_next = rng.normal(size=(3, 6, 72)).astype(np.float32)
    reward = np.full((3, 6), -0.01, np.float32)
    outcome = np.zeros((3, 6), np.int8)
    got = []
    for device in ("@numpy", "@cupy:0"):
        np.random.seed(1)
        m = MapRNN(z_size=72, side=6, channels=4, n_mixtures=2, outcome_head=True)
        m.to_device(chainer.get_device(device))
        xp = m.xp
        loss, _ = MDNRNNLoss(m)(*(xp.asarray(v) for v in (z, a, z_next)), None,
                                xp.asarray(reward), None, None, xp.asarray(outcome))  # fmt: skip
        m.cleargrads()
        loss.backward()
        step = m.step(xp.asarray(z[:, 0]), xp.asarray(a[:, 0]))
        got.append((float(loss.array), devices.to_host(m.gates.W.grad), devices.to_host(step.h)))
    assert got[1][0] == pytest.approx(got[0][0], rel=1e-4)
    np.testing.assert_allclose(got[1][1], got[0][1], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(got[1][2], got[0][2], atol=1e-5)
