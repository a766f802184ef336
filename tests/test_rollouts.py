"""The lockstep runner, the rollout `.npz` contract and its loader, and the
seed derivation that makes data independent of worker counts."""

import os
import zipfile

import numpy as np
import pytest

from lib.data import datagen
from lib.env import policies as P
from lib.env import socnavenv as sn
from lib.env.rollouts import (
    BadRolloutError,
    Episode,
    episode_filename,
    list_rollouts,
    load_episode,
    run_episodes,
    save_episode,
)
from lib.seeding import derive_seed, derive_seeds

CONFIG = sn.EnvConfig(max_steps=30)


def collect(policy_name, seeds, n_envs, config=CONFIG, keep_obs=True):
    episodes = []
    policy = P.make_policy(policy_name, n_envs)
    run_episodes(policy, seeds, config, n_envs, episodes.append, keep_obs=keep_obs)
    return sorted(episodes, key=lambda e: e.index)


@pytest.fixture(scope="module")
def episodes():
    return collect("mixed", range(100, 112), 5)


@pytest.fixture
def saved(tmp_path, episodes):
    path = tmp_path / "000000.npz"
    save_episode(str(path), episodes[0])
    return path


# ---------------------------------------------------------------------------
# run_episodes
# ---------------------------------------------------------------------------
def test_episode_arrays_follow_the_contract(episodes):
    assert [e.index for e in episodes] == list(range(12))
    assert [e.seed for e in episodes] == list(range(100, 112))
    for e in episodes:
        t = e.length
        assert 1 <= t <= 30
        assert e.obs.shape == (t + 1, 64, 64, 3) and e.obs.dtype == np.uint8
        assert e.action.shape == (t, 2) and e.action.dtype == np.float32
        assert e.reward.shape == (t,) and e.reward.dtype == np.float32
        assert e.done.dtype == bool and e.done[-1] and not e.done[:-1].any()
        assert np.all(np.abs(e.action) <= 1.0)
        final = {"success": 1.0, "collision": -1.0, "out_of_map": -0.5, "timeout": -0.5}
        assert e.reward[-1] == final[e.outcome]
        assert np.all((e.reward[:-1] < 0) & (e.reward[:-1] > -0.02))
        assert e.outcome != "timeout" or t == 30  # a timeout takes all 30 steps


def test_episode_replays_in_the_gymnasium_env(episodes):
    # The recorded frames and rewards are exactly what SocNavEnv gives for the
    # recorded actions from the same seed.
    env = sn.SocNavEnv(max_steps=30)
    for e in episodes[:4]:
        obs, _ = env.reset(seed=e.seed)
        np.testing.assert_array_equal(obs, e.obs[0])
        for t, a in enumerate(e.action):
            obs, r, term, trunc, info = env.step(a)
            np.testing.assert_array_equal(obs, e.obs[t + 1])
            assert np.float32(r) == e.reward[t]
        assert term or trunc
        assert info["outcome"] == e.outcome


def test_run_episodes_independent_of_batch_size(episodes):
    for n_envs in (1, 12):
        other = collect("mixed", range(100, 112), n_envs)
        for a, b in zip(episodes, other):
            np.testing.assert_array_equal(a.obs, b.obs)
            np.testing.assert_array_equal(a.action, b.action)
            np.testing.assert_array_equal(a.reward, b.reward)


def test_run_episodes_without_obs_and_step_counts():
    steps = []
    policy = P.make_policy("greedy", 4)
    out = []
    run_episodes(policy, [1, 2, 3], CONFIG, 4, out.append, on_step=steps.append)
    assert len(out) == 3 and all(e.obs is None for e in out)
    assert sum(steps) == sum(e.length for e in out)
    assert max(steps) == 3
    run_episodes(policy, [], CONFIG, 4, out.append)
    assert len(out) == 3
    with pytest.raises(ValueError, match="slots"):
        run_episodes(P.make_policy("greedy", 2), [1, 2, 3], CONFIG, 4, out.append)


def test_nan_actions_are_recorded_as_applied():
    class NaNPolicy(P.Policy):
        def act(self, sim, images=None):
            return np.full((sim.n, 2), np.nan, np.float32)

    out = []
    run_episodes(NaNPolicy(1), [5], sn.EnvConfig(max_steps=3), 1, out.append)
    assert np.all(np.isfinite(out[0].action))


# ---------------------------------------------------------------------------
# save_episode / load_episode
# ---------------------------------------------------------------------------
def test_save_and_load_round_trip(saved, episodes):
    e = episodes[0]
    with np.load(saved, allow_pickle=False) as z:
        assert set(z.files) == {"obs", "action", "reward", "done", "outcome", "seed"}
        assert z["obs"].dtype == np.uint8 and z["action"].dtype == np.float32
        assert z["reward"].dtype == np.float32 and z["done"].dtype == bool
        assert z["outcome"].dtype.kind == "U" and z["seed"].dtype == np.int64
    data = load_episode(str(saved))
    np.testing.assert_array_equal(data["obs"], e.obs)
    np.testing.assert_array_equal(data["action"], e.action)
    np.testing.assert_array_equal(data["reward"], e.reward)
    np.testing.assert_array_equal(data["done"], e.done)
    assert data["outcome"] == e.outcome and data["seed"] == e.seed
    assert list_rollouts(str(saved.parent)) == [str(saved)]
    assert not [f for f in os.listdir(saved.parent) if f.startswith(".tmp_")]


def test_save_without_frames_refuses(tmp_path, episodes):
    e = episodes[0]
    bare = Episode(e.index, e.seed, e.outcome, e.action, e.reward, e.done, e.min_dist, e.path)
    with pytest.raises(ValueError, match="keep_obs"):
        save_episode(str(tmp_path / "x.npz"), bare)
    assert os.listdir(tmp_path) == []


def _write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _good(t=4, size=64):
    return {
        "obs": np.zeros((t + 1, size, size, 3), np.uint8),
        "action": np.zeros((t, 2), np.float32),
        "reward": np.zeros(t, np.float32),
        "done": np.arange(t) == t - 1,
    }


@pytest.mark.parametrize(
    "change, message",
    [
        ({"obs": np.zeros((4, 64, 64, 3), np.uint8)}, "inconsistent"),  # T frames, not T+1
        ({"action": np.zeros((4, 3), np.float32)}, "inconsistent"),
        ({"reward": np.zeros(5, np.float32)}, "inconsistent"),
        ({"done": np.zeros((4, 1), bool)}, "inconsistent"),
        ({"obs": np.zeros((5, 64, 64, 3), np.float32)}, "uint8"),
        ({"obs": np.zeros((5, 64, 64), np.uint8)}, "uint8"),
        ({"obs": np.zeros((5, 32, 32, 3), np.uint8)}, "32x32"),
        (
            {
                "obs": np.zeros((1, 64, 64, 3), np.uint8),
                "action": np.zeros((0, 2), np.float32),
                "reward": np.zeros(0, np.float32),
                "done": np.zeros(0, bool),
            },
            "inconsistent",
        ),
    ],
)
def test_load_rejects_wrong_shapes(tmp_path, change, message):
    path = _write(tmp_path / "bad.npz", **{**_good(), **change})
    with pytest.raises(BadRolloutError, match=message):
        load_episode(path)


def test_load_accepts_other_sizes_when_asked(tmp_path):
    path = _write(tmp_path / "small.npz", **_good(size=32))
    assert load_episode(path, image_size=None)["obs"].shape == (5, 32, 32, 3)
    assert load_episode(path, image_size=32)["action"].shape == (4, 2)


def test_load_rejects_missing_keys(tmp_path):
    arrays = _good()
    del arrays["done"]
    with pytest.raises(BadRolloutError, match="missing keys"):
        load_episode(_write(tmp_path / "x.npz", **arrays))


def test_load_rejects_pickled_objects(tmp_path):
    arrays = {**_good(), "action": np.array([None, {"a": 1}], dtype=object)}
    with pytest.raises(BadRolloutError, match="unreadable"):
        load_episode(_write(tmp_path / "x.npz", **arrays))


def test_load_rejects_corrupt_and_truncated_files(tmp_path, saved):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file at all" * 10)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    # A valid zip whose member is corrupt.
    broken = tmp_path / "broken.npz"
    with zipfile.ZipFile(broken, "w") as z:
        for k in ("obs", "action", "reward", "done"):
            z.writestr(f"{k}.npy", b"\x93NUMPY garbage")
    for path in (garbage, empty, truncated, broken, tmp_path / "missing.npz"):
        with pytest.raises(BadRolloutError) as info:
            load_episode(str(path))
        assert str(path) in str(info.value)
        assert "\n" not in str(info.value)


def test_list_rollouts_skips_temporaries(tmp_path, saved):
    (tmp_path / ".tmp_abc.npz").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("x")
    assert list_rollouts(str(tmp_path)) == [str(saved)]
    assert list_rollouts(str(tmp_path / "nope")) == []
    assert episode_filename(7) == "000007.npz"


# ---------------------------------------------------------------------------
# Seeds and dataset planning
# ---------------------------------------------------------------------------
def test_derive_seed_depends_only_on_keys():
    a = derive_seed(0, "vae/train", 3)
    assert a == derive_seed(0, "vae/train", 3)
    assert 0 <= a < 2**63
    others = {derive_seed(0, "vae/test", 3), derive_seed(1, "vae/train", 3)}
    others |= {derive_seed(0, "vae/train", 4), derive_seed(0, "rnn/train", 3)}
    assert a not in others and len(others) == 4
    seeds = derive_seeds(5, "s", 4, start=10)
    assert seeds.dtype == np.int64
    assert list(seeds) == [derive_seed(5, "s", i) for i in range(10, 14)]
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1)


def test_plan_split_lists_only_missing_files(tmp_path):
    (tmp_path / "000001.npz").write_bytes(b"")
    (tmp_path / "000003.npz").write_bytes(b"")
    plan = datagen.plan_split(str(tmp_path), 5, 7, "vae", "train")
    assert [i for i, _ in plan] == [0, 2, 4]
    assert [s for _, s in plan] == [derive_seed(7, "vae/train", i) for i in (0, 2, 4)]
    test_plan = datagen.plan_split(str(tmp_path / "none"), 2, 7, "vae", "test")
    assert [s for _, s in test_plan] != [s for _, s in plan[:2]]


def test_remove_stale_temporaries(tmp_path, saved):
    (tmp_path / ".tmp_x1.npz").write_bytes(b"x")
    (tmp_path / ".tmp_y2.npz").write_bytes(b"y")
    assert datagen.remove_stale_temporaries(str(tmp_path)) == 2
    assert sorted(os.listdir(tmp_path)) == [saved.name]
    assert datagen.remove_stale_temporaries(str(tmp_path / "none")) == 0


def test_check_manifest_refuses_other_settings(tmp_path):
    from lib import manifest

    ident = datagen.identity(1, "random", sn.EnvConfig(), "vae")
    manifest.write_json(str(tmp_path / "manifest.json"), {"identity": ident})
    datagen.check_manifest(str(tmp_path), ident, overwrite=False)  # same: fine
    other = datagen.identity(2, "random", sn.EnvConfig(), "vae")
    with pytest.raises(datagen.DatasetMismatch, match="seed 1 -> 2"):
        datagen.check_manifest(str(tmp_path), other, overwrite=False)
    datagen.check_manifest(str(tmp_path), other, overwrite=True)
    env = datagen.identity(1, "random", sn.EnvConfig(n_humans=3), "vae")
    with pytest.raises(datagen.DatasetMismatch, match="environment settings"):
        datagen.check_manifest(str(tmp_path), env, overwrite=False)


# ---------------------------------------------------------------------------
# Teacher labels (01 --labels)
# ---------------------------------------------------------------------------
def test_teacher_labels_each_step_without_playing():
    seeds = range(300, 306)
    plain = collect("mixed", seeds, 3)
    labelled = []
    run_episodes(
        P.make_policy("mixed", 3), seeds, CONFIG, 3, labelled.append, keep_obs=True,
        teacher=P.make_policy("oracle", 3),
    )  # fmt: skip
    labelled.sort(key=lambda e: e.index)
    for a, b in zip(plain, labelled):
        np.testing.assert_array_equal(a.action, b.action)  # the teacher played nothing
        np.testing.assert_array_equal(a.obs, b.obs)
        assert a.teacher is None and b.teacher.shape == (b.length, 2)
        assert b.teacher.dtype == np.float32
    # Each label is the oracle's action in the state of that step: replay episode 0.
    ep = labelled[0]
    sim = sn.SocNavSim(1, CONFIG)
    sim.reset_slot(0, np.random.default_rng(ep.seed))
    oracle = P.make_policy("oracle", 1)
    for t in range(ep.length):
        np.testing.assert_allclose(sn.applied_actions(oracle.act(sim))[0], ep.teacher[t])
        sim.step(ep.action[t : t + 1])
    assert any(not np.allclose(e.teacher, e.action) for e in labelled)


def test_teacher_labels_round_trip_and_are_checked(tmp_path, episodes):
    ep = episodes[1]
    told = np.linspace(-1, 1, 2 * ep.length, dtype=np.float32).reshape(ep.length, 2)
    path = str(tmp_path / "000000.npz")
    save_episode(path, Episode(**{**ep.__dict__, "teacher": told}))
    np.testing.assert_array_equal(load_episode(path)["teacher"], told)
    save_episode(path, ep)
    assert "teacher" not in load_episode(path)
    bad = _write(tmp_path / "bad.npz", **_good(), teacher=np.zeros((5, 2), np.float32))
    with pytest.raises(BadRolloutError, match="teacher"):
        load_episode(bad)
