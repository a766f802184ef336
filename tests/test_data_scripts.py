"""01_generate_vae_data.py and 02_generate_rnn_data.py end to end on tiny
sizes: the files they write, worker-count independence, resume, the
manifest guard, --help, and one-line failures on bad input."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
from cli_helpers import bad_flags, run_here

from lib.data import datagen
from lib.env import socnavenv as sn
from lib.env.rollouts import BadRolloutError, list_rollouts, load_episode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAE = "01_generate_vae_data.py"
RNN = "02_generate_rnn_data.py"
TINY = ["--rollouts", "5", "--testrollouts", "2", "--max-steps", "25", "--seed", "3"]
SHARED_FLAGS = [
    "--data-dir",
    "--seed",
    "--policy",
    "--view-size",
    "--workers",
    "--n-humans",
    "--max-steps",
    "--backend",
    "--address",
    "--overwrite",
]


def arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def assert_same_dataset(a, b):
    for split in ("train", "test"):
        fa = [os.path.basename(p) for p in list_rollouts(os.path.join(a, split))]
        fb = [os.path.basename(p) for p in list_rollouts(os.path.join(b, split))]
        assert fa == fb and fa
        for name in fa:
            xa = arrays(os.path.join(a, split, name))
            xb = arrays(os.path.join(b, split, name))
            assert xa.keys() == xb.keys()
            for k in xa:
                assert xa[k].dtype == xb[k].dtype, (name, k)
                np.testing.assert_array_equal(xa[k], xb[k], err_msg=f"{name} {k}")


def mtimes(root):
    out = {}
    for split in ("train", "test"):
        for p in list_rollouts(os.path.join(root, split)):
            out[p] = os.stat(p).st_mtime_ns
    return out


def copy_run(src, tmp_path):
    """A copy of 01's run folder `src` to change: (its data dir, its vae_data)."""
    data = tmp_path / "data"
    shutil.copytree(src, data)
    return data, data / "vae_data"


def assert_one_line_failure(result):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, script):
    """01 run once with one worker; returns (data dir, completed process)."""
    data = tmp_path_factory.mktemp("w1")
    result = script(VAE, *TINY, "--workers", "1", "--data-dir", data)
    assert result.returncode == 0, result.stderr
    return data, result


# ---------------------------------------------------------------------------
# What 01 writes
# ---------------------------------------------------------------------------
def test_01_writes_the_data_contract(vae_run):
    data, result = vae_run
    root = data / "vae_data"
    assert len(list_rollouts(str(root / "train"))) == 5
    assert len(list_rollouts(str(root / "test"))) == 2
    assert sorted(os.listdir(root / "train")) == [f"{i:06d}.npz" for i in range(5)]
    seeds = set()
    for path in list_rollouts(str(root / "train")) + list_rollouts(str(root / "test")):
        z = arrays(path)
        assert set(z) == {"obs", "action", "reward", "done", "outcome", "seed"}
        t = len(z["action"])
        assert 1 <= t <= 25
        assert z["obs"].shape == (t + 1, 64, 64, 3) and z["obs"].dtype == np.uint8
        assert z["action"].shape == (t, 2) and z["action"].dtype == np.float32
        assert z["reward"].shape == (t,) and z["reward"].dtype == np.float32
        assert z["done"].shape == (t,) and z["done"].dtype == bool
        assert z["done"][-1] and not z["done"][:-1].any()
        assert np.all(np.abs(z["action"]) <= 1.0)
        assert str(z["outcome"]) in ("success", "collision", "out_of_map", "timeout")
        assert (str(z["outcome"]) == "timeout") <= (t == 25)  # a timeout takes all 25 steps
        assert z["obs"].std() > 10  # real frames, not blank
        seeds.add(int(z["seed"]))
        assert load_episode(path)["action"].shape == (t, 2)
    assert len(seeds) == 7
    assert "7 rollouts to write (0 already on disk)" in result.stdout


def test_01_manifest_records_identity(vae_run):
    data, _ = vae_run
    m = json.loads((data / "vae_data" / "manifest.json").read_text())
    assert m["script"] == VAE
    assert m["complete"] is True
    assert m["files"] == {"train": 5, "test": 2}
    assert m["identity"]["seed"] == 3 and m["identity"]["policy"] == "mixed"
    assert m["identity"]["stream"] == "vae"
    assert m["identity"]["env"]["max_steps"] == 25
    assert m["identity"]["env"]["image_size"] == 64
    assert m["args"]["rollouts"] == 5 and m["args"]["testrollouts"] == 2
    assert {"numpy", "numba", "gymnasium", "python"} <= set(m["versions"])


def test_01_is_independent_of_worker_count(vae_run, tmp_path, script):
    data, _ = vae_run
    result = script(VAE, *TINY, "--workers", "2", "--data-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert_same_dataset(data / "vae_data", tmp_path / "vae_data")


def test_01_resume_writes_only_missing_files(vae_run, tmp_path, script):
    src, _ = vae_run
    data, root = copy_run(src, tmp_path)
    missing = [root / "train" / "000001.npz", root / "train" / "000004.npz"]
    missing.append(root / "test" / "000000.npz")
    for p in missing:
        p.unlink()
    stale = root / "train" / ".tmp_interrupted.npz"
    stale.write_bytes(b"half a file")
    before = mtimes(root)
    result = script(VAE, *TINY, "--workers", "2", "--data-dir", data)
    assert result.returncode == 0, result.stderr
    assert "3 rollouts to write (4 already on disk)" in result.stdout
    assert not stale.exists()
    assert not [f for s in ("train", "test") for f in os.listdir(root / s) if f.startswith(".")]
    after = mtimes(root)
    assert set(after) == set(before) | {str(p) for p in missing}
    for p, t in before.items():
        assert after[p] == t, f"{p} was rewritten"
    assert_same_dataset(src / "vae_data", root)
    # Nothing missing: nothing to do.
    result = script(VAE, *TINY, "--workers", "1", "--data-dir", data)
    assert result.returncode == 0, result.stderr
    assert "0 rollouts to write (7 already on disk)" in result.stdout
    assert mtimes(root) == after


def test_01_refuses_another_seed_then_overwrite_replaces(vae_run, tmp_path, script):
    src, _ = vae_run
    data, root = copy_run(src, tmp_path)
    before = mtimes(root)
    manifest_before = (root / "manifest.json").read_text()
    other = [a if a != "3" else "4" for a in TINY]  # --seed 4
    result = script(VAE, *other, "--workers", "1", "--data-dir", data)
    line = assert_one_line_failure(result)
    assert result.returncode == 2
    assert "seed 3 -> 4" in line and "--overwrite" in line
    assert mtimes(root) == before
    assert (root / "manifest.json").read_text() == manifest_before

    result = script(VAE, *other, "--workers", "1", "--data-dir", data, "--overwrite")
    assert result.returncode == 0, result.stderr
    m = json.loads((root / "manifest.json").read_text())
    assert m["identity"]["seed"] == 4
    assert len(list_rollouts(str(root / "train"))) == 5
    old = arrays(src / "vae_data" / "train" / "000000.npz")
    new = arrays(root / "train" / "000000.npz")
    assert int(new["seed"]) != int(old["seed"])
    # The replaced dataset now resumes under the new seed without complaint.
    result = script(VAE, *other, "--workers", "1", "--data-dir", data)
    assert result.returncode == 0, result.stderr


def test_01_labels_adds_the_teachers_action_and_is_part_of_the_identity(vae_run, tmp_path, script):
    src, _ = vae_run
    data, root = copy_run(src, tmp_path)
    before = mtimes(root)
    # Labels change the files, so they are part of what must match.
    result = script(VAE, *TINY, "--labels", "oracle", "--workers", "1", "--data-dir", data)
    line = assert_one_line_failure(result)
    assert "labels None -> 'oracle'" in line and "--overwrite" in line
    assert mtimes(root) == before
    result = script(VAE, *TINY, "--labels", "oracle", "--workers", "1", "--data-dir", data,
                    "--overwrite")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "labelled by oracle" in result.stdout
    assert json.loads((root / "manifest.json").read_text())["identity"]["labels"] == "oracle"
    for split in ("train", "test"):
        for path in list_rollouts(str(root / split)):
            old, new = arrays(src / "vae_data" / split / os.path.basename(path)), arrays(path)
            assert set(new) == set(old) | {"teacher"}
            for k in old:  # the same episodes, labelled
                np.testing.assert_array_equal(old[k], new[k])
            assert new["teacher"].shape == (len(new["action"]), 2)
            assert np.all(np.abs(new["teacher"]) <= 1)
    result = script(VAE, *TINY, "--labels", "random", "--data-dir", data)
    assert "--labels" in assert_one_line_failure(result)


# ---------------------------------------------------------------------------
# 02
# ---------------------------------------------------------------------------
def test_02_end_to_end(vae_run, tmp_path, script):
    args = ["--episodes", "3", "--testepisodes", "1", "--max-steps", "20", "--seed", "3"]
    result = script(RNN, *args, "--policy", "greedy", "--workers", "1", "--data-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    root = tmp_path / "rnn_data"
    files = list_rollouts(str(root / "train"))
    assert len(files) == 3 and len(list_rollouts(str(root / "test"))) == 1
    m = json.loads((root / "manifest.json").read_text())
    assert m["script"] == RNN and m["identity"]["stream"] == "rnn"
    assert m["identity"]["policy"] == "greedy"
    ep = load_episode(files[0])
    assert ep["obs"].shape[0] == len(ep["action"]) + 1
    assert ep["done"][-1] and not ep["done"][:-1].any()
    # Greedy turns or drives at full speed: its advance is always +-1.
    assert set(np.unique(ep["action"][:, 0]).tolist()) <= {-1.0, 1.0}
    # 02's seed stream differs from 01's for the same --seed.
    vae_seed = int(arrays(vae_run[0] / "vae_data" / "train" / "000000.npz")["seed"])
    assert ep["seed"] != vae_seed


def test_02_is_independent_of_worker_count(tmp_path, script):
    """02's episodes (the default mixed policy, whose walks draw from each episode's own
    stream) are the same arrays with 1 and 2 workers."""
    args = ["--episodes", "4", "--testepisodes", "2", "--max-steps", "20", "--seed", "5"]
    for workers in (1, 2):
        result = script(RNN, *args, "--workers", workers, "--data-dir", tmp_path / f"w{workers}")
        assert result.returncode == 0, result.stderr
    assert_same_dataset(tmp_path / "w1" / "rnn_data", tmp_path / "w2" / "rnn_data")


def test_02_zero_episodes_is_a_valid_no_op(tmp_path, script):
    result = script(RNN, "--episodes", "0", "--testepisodes", "0", "--data-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "0 episodes to write" in result.stdout
    assert list_rollouts(str(tmp_path / "rnn_data" / "train")) == []


# ---------------------------------------------------------------------------
# --help and bad input
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, own",
    [
        (VAE, ["--rollouts", "--testrollouts", "--labels"]),
        (RNN, ["--episodes", "--testepisodes", "--labels"]),
    ],
)
def test_help_lists_every_flag(name, own, script):
    result = script(name, "--help")
    assert result.returncode == 0
    for flag in own + SHARED_FLAGS:
        assert flag in result.stdout, flag
    for policy in ("random", "brownian", "mixed"):
        assert policy in result.stdout
    assert result.stdout.splitlines()[0].startswith("usage:")


def test_scripts_do_no_work_at_import(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in (VAE, RNN):
        spec = importlib.util.spec_from_file_location("script", os.path.join(REPO, name))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert callable(module.main) and callable(module.parse_args)
        args = module.parse_args(["--seed", "9", "--workers", "1"])
        assert args.seed == 9 and args.workers == 1 and args.policy == "mixed"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", [VAE, RNN])
@pytest.mark.parametrize("bad, message", bad_flags("01_generate_vae_data.py"))
def test_bad_input_fails_in_one_line(name, bad, message, tmp_path):
    """In this process (the exit code's contract is the subprocess tests' below)."""
    if name == RNN:
        bad = [
            {"--rollouts": "--episodes", "--testrollouts": "--testepisodes"}.get(a, a) for a in bad
        ]
    result = run_here(name, *bad, "--data-dir", tmp_path)
    line = assert_one_line_failure(result)
    assert result.returncode == 2
    assert message in line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", [VAE, RNN])
def test_unwritable_data_dir_fails_in_one_line(name, tmp_path, script):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    counts = ["--rollouts", "1", "--testrollouts", "0"]
    if name == RNN:
        counts = ["--episodes", "1", "--testepisodes", "0"]
    result = script(name, *counts, "--workers", "1", "--data-dir", blocker / "data")
    line = assert_one_line_failure(result)
    assert "cannot write" in line and str(blocker) in line
    assert blocker.read_text() == "not a folder"


def _have_ray():
    return importlib.util.find_spec("ray") is not None


@pytest.mark.skipif(_have_ray(), reason="Ray is installed")
@pytest.mark.parametrize("name", [VAE, RNN])
def test_ray_backend_without_ray_fails_in_one_line(name, tmp_path, script):
    result = script(name, "--backend", "ray", "--workers", "1", "--data-dir", tmp_path)
    line = assert_one_line_failure(result)
    assert "Ray" in line and "pip install" in line
    assert list_rollouts(str(tmp_path / "vae_data" / "train")) == []
    assert list_rollouts(str(tmp_path / "rnn_data" / "train")) == []


def test_load_episode_rejects_a_truncated_generated_file(vae_run, tmp_path):
    src = vae_run[0] / "vae_data" / "train" / "000000.npz"
    bad = tmp_path / "000000.npz"
    bad.write_bytes(src.read_bytes()[:-100])
    with pytest.raises(BadRolloutError):
        load_episode(str(bad))


def _die(task):
    """Stands in for datagen._run_task: the worker process dies."""
    os._exit(3)


def test_a_dying_worker_is_a_worker_died_error(tmp_path, monkeypatch):
    monkeypatch.setattr(datagen, "_run_task", _die)  # the forked workers inherit it
    tasks = datagen.make_tasks(str(tmp_path), [(0, 1), (1, 2)], "random", sn.EnvConfig())
    with pytest.raises(datagen.WorkerDied, match="re-run the same command"):
        datagen.run_tasks(tasks, 2, "local", None, None)


def test_view_size_draws_wider_frames_and_is_recorded(tmp_path, script):
    wide = tmp_path / "wide"
    args = ["--rollouts", 1, "--testrollouts", 0, "--max-steps", 5, "--workers", 1]
    assert script(VAE, *args, "--data-dir", tmp_path / "default").returncode == 0
    assert script(VAE, *args, "--view-size", 16, "--data-dir", wide).returncode == 0
    env = json.loads((wide / "vae_data" / "manifest.json").read_text())["identity"]["env"]
    assert env["view_size"] == 16.0
    (a,) = list_rollouts(str(tmp_path / "default" / "vae_data" / "train"))
    (b,) = list_rollouts(str(wide / "vae_data" / "train"))
    first_a, first_b = load_episode(a)["obs"][0], load_episode(b)["obs"][0]
    # The same episode (same seed), seen from twice as far: the room looks smaller, so
    # more of the frame is the grey outside.
    outside = np.array(sn.OUTSIDE_RGB, np.uint8)
    share = [np.mean(np.all(f == outside, axis=-1)) for f in (first_a, first_b)]
    assert share[1] > share[0]
