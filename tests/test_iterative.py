"""The paper's iterative procedure: a trained C's episodes (02 --agent, through
`lib.control.agent.ExploringAgent`) fed back into M's training (04 --extra-episodes)."""

import json
import shutil

import numpy as np
import pytest
from cli_helpers import assert_same_arrays, one_line_error, run, run_here

from lib.control.agent import ExploringAgent, WorldModelsAgent
from lib.data import latents
from lib.env import socnavenv as sn
from lib.env.evaluation import evaluate, evaluation_seeds
from lib.models import saved_models
from lib.models.controller import n_params


@pytest.fixture(scope="module")
def with_c(tiny_models, tmp_path_factory):
    """The tiny models and a C trained for one generation in their dream."""
    d = tmp_path_factory.mktemp("iterative") / "d"
    shutil.copytree(tiny_models, d)
    run("07_train_controller.py", "--dream", "--name", "controller_dream", "--epochs", 1,
        "--popsize", 4, "--trials", 1, "--eval-every", 1, "--eval-episodes", 1,
        "--max-steps", 40, "--data-dir", d)  # fmt: skip
    return d


def play(agent_of, seeds, n):
    _, episodes = evaluate(agent_of(n), seeds, sn.EnvConfig(max_steps=40), n_envs=n)
    return episodes


def test_the_exploring_agent_is_c_without_noise_and_per_seed_with_it(tiny_models):
    vae, _ = saved_models.load_vae(str(tiny_models))
    rnn, _ = saved_models.load_rnn(str(tiny_models), "dream", 8)
    params = np.random.default_rng(0).normal(0, 0.5, (1, n_params(8, 16))).astype(np.float32)
    seeds = evaluation_seeds(3, 4)
    plain = play(lambda n: WorldModelsAgent(n, vae, rnn, params), seeds, 4)
    quiet = play(lambda n: ExploringAgent(n, vae, rnn, params, 0.0), seeds, 4)
    for a, b in zip(plain, quiet):
        np.testing.assert_array_equal(a.action, b.action)
    noisy = play(lambda n: ExploringAgent(n, vae, rnn, params, 0.5), seeds, 4)
    alone = [play(lambda n: ExploringAgent(n, vae, rnn, params, 0.5), [s], 1)[0] for s in seeds]
    k = min(len(noisy[0].action), len(plain[0].action))
    assert np.abs(noisy[0].action[:k] - plain[0].action[:k]).max() > 0.05
    for a, b in zip(noisy, alone):  # the noise follows the episode's seed, not its slot
        np.testing.assert_allclose(a.action, b.action, atol=1e-5)
    assert all(np.abs(e.action).max() <= 1.0 for e in noisy)
    with pytest.raises(ValueError, match="noise"):
        ExploringAgent(1, vae, rnn, params, -0.1)


def test_latent_episodes_concatenate(tiny_models):
    vae, _ = saved_models.load_vae(str(tiny_models))
    split = tiny_models / "rnn_data" / "train"
    a, _ = latents.encode_split(str(split), vae, str(tiny_models / "models" / "vae.npz"))
    b = a.first(2)
    both = latents.concatenate([a, b])
    assert len(both) == len(a) + 2 and both.files == a.files + b.files
    np.testing.assert_array_equal(both.lengths, np.concatenate([a.lengths, b.lengths]))
    for e in range(2):
        for key, value in b.episode(e).items():
            np.testing.assert_array_equal(both.episode(len(a) + e)[key], value, err_msg=key)
    assert latents.concatenate([a]) is a


def test_02_plays_a_trained_c_and_04_trains_on_its_episodes(with_c, tmp_path):
    flags = ["--agent", "controller_dream", "--agent-dir", with_c, "--episodes", 3,
             "--testepisodes", 1, "--max-steps", 40, "--agent-noise", 0.2]  # fmt: skip
    out = run("02_generate_rnn_data.py", *flags, "--workers", 2, "--data-dir", tmp_path / "c")
    assert "policy agent:controller_dream" in out.stdout
    ident = json.loads((tmp_path / "c" / "rnn_data" / "manifest.json").read_text())["identity"]
    assert ident["policy"] == "agent:controller_dream" and ident["agent"]["noise"] == 0.2
    assert set(ident["agent"]) == {"controller_dream.npz", "vae.npz", "rnn_dream.npz", "noise"}
    # the same episodes from one worker
    run("02_generate_rnn_data.py", *flags, "--workers", 1, "--data-dir", tmp_path / "one")
    for split in ("train", "test"):
        files = sorted((tmp_path / "c" / "rnn_data" / split).glob("*.npz"))
        assert len(files) == {"train": 3, "test": 1}[split]
        for f in files:
            assert_same_arrays(f, tmp_path / "one" / "rnn_data" / split / f.name)
    # another noise is another dataset: refused, nothing touched
    before = sorted(p.read_bytes() for p in (tmp_path / "c" / "rnn_data" / "train").iterdir())
    line = one_line_error(
        run_here("02_generate_rnn_data.py", *flags[:-1], 0.3, "--data-dir", tmp_path / "c")
    )
    assert "agent" in line and "--overwrite" in line
    after = sorted(p.read_bytes() for p in (tmp_path / "c" / "rnn_data" / "train").iterdir())
    assert before == after
    # 04 trains on the C's episodes after its own
    m = tmp_path / "m"
    shutil.copytree(with_c, m)
    out = run("04_train_rnn.py", "--mode", "dream", "--epochs", 1, "--batch-size", 4,
              "--hidden", 16, "--overwrite", "--extra-episodes", tmp_path / "c",
              "--data-dir", m)  # fmt: skip
    assert f"+ 3 episodes from {tmp_path / 'c' / 'rnn_data'}/train" in out.stdout
    assert "train: 9 episodes" in out.stdout  # 6 of the tiny data's own, 3 of the C's
    sidecar = json.loads((m / "models" / "rnn_dream.json").read_text())
    assert sidecar["args"]["extra_episodes"] == [str(tmp_path / "c")]


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--agent-dir", "x"], "add --agent"),
        (["--agent", "nosuch"], "nosuch.npz"),
        (["--agent", "controller_dream", "--view-size", "6"], "--view-size 8.0"),
        (["--agent", "controller_dream", "--agent-noise", "-1"], "--agent-noise"),
    ],
)
def test_02_refuses_a_bad_agent_in_one_line(with_c, tmp_path, flags, needle):
    flags = [str(f) if f != "x" else str(with_c) for f in flags]
    if "--agent-dir" not in flags:
        flags += ["--agent-dir", str(with_c)]
    line = one_line_error(
        run_here("02_generate_rnn_data.py", *flags, "--episodes", 1, "--data-dir", tmp_path)
    )
    assert needle in line
    assert not (tmp_path / "rnn_data").exists()


def test_04_refuses_a_folder_without_episodes(tiny_models, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(tiny_models, d)
    flags = ["--mode", "dream", "--epochs", 1, "--hidden", 16, "--overwrite"]
    extra = ["--extra-episodes", tmp_path / "none"]
    line = one_line_error(run_here("04_train_rnn.py", *flags, *extra, "--data-dir", d))
    assert "--extra-episodes" in line and "run 02" in line
