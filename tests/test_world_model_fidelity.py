"""M's fidelity as a simulator (lib/diagnostics/open_loop.py and the open-loop parts of
lib/diagnostics/world_model.py), on rigged Ms whose answers are known: one that replays
the true future, one that copies its input, and the probe on a target built to be linear."""

import numpy as np
import pytest

from lib.data.latents import LatentEpisodes
from lib.diagnostics import open_loop as ol
from lib.diagnostics import world_model as wm
from lib.diagnostics.probe import auc, task_quantities
from lib.env import socnavenv as sn
from lib.models import ego_warp
from lib.models.mdn_rnn import MixtureParams, StepOutput, sample

CONFIG = sn.EnvConfig(max_steps=60)


def simulated(n_episodes=16, seed=3, z_size=12):
    """Real episodes of a random walk (advancing mostly), their seeds and true quantities,
    and z made linear in those quantities (plus a little noise), one row per frame."""
    rng = np.random.default_rng(seed)
    seeds = np.arange(100, 100 + n_episodes)
    sim = sn.SocNavSim(n_episodes, CONFIG)
    sim.reset_seeds(seeds)
    frames = [[] for _ in range(n_episodes)]
    actions = [[] for _ in range(n_episodes)]
    rewards = [[] for _ in range(n_episodes)]
    alive = np.ones(n_episodes, bool)
    while alive.any():
        q = task_quantities(sim, np.arange(n_episodes))
        for e in np.flatnonzero(alive):
            frames[e].append({k: q[k][e] for k in (*ol.QUANTITIES, "person_mask")})
        a = np.stack([rng.uniform(0.3, 1.0, n_episodes), rng.uniform(-0.6, 0.6, n_episodes)], 1)
        a = a.astype(np.float32).astype(np.float64)  # as the files store them
        sim.step(a)
        for e in np.flatnonzero(alive):
            actions[e].append(a[e])
            rewards[e].append(sim.reward[e])
        ended = alive & ~sim.active
        q = task_quantities(sim, np.arange(n_episodes))
        for e in np.flatnonzero(ended):
            frames[e].append({k: q[k][e] for k in (*ol.QUANTITIES, "person_mask")})
        alive &= sim.active
    truth = {k: np.array([f[k] for ep in frames for f in ep]) for k in frames[0][0]}
    lengths = np.array([len(a) for a in actions])
    x = np.stack([truth[k] for k in ol.QUANTITIES], 1)
    mix = rng.normal(size=(x.shape[1], z_size))
    mu = (x @ mix + 0.01 * rng.normal(size=(len(x), z_size))).astype(np.float32)
    data = LatentEpisodes(
        {
            "mu": mu,
            "logvar": np.full_like(mu, -4.0),
            "action": np.concatenate(actions).astype(np.float32),
            "reward": np.concatenate(rewards).astype(np.float32),
            "done": np.concatenate([np.arange(t) == t - 1 for t in lengths]),
            "frame_offsets": np.cumsum([0, *(lengths + 1)]),
            "step_offsets": np.cumsum([0, *lengths]),
            "files": np.array([f"{e:05d}.npz" for e in range(n_episodes)]),
        }
    )
    return data, seeds, truth


class RiggedM:
    """An M with known answers, stepping NumPy arrays like `MDNRNN.step`.

    "replay" predicts the true next z of the episode its input came from, with the true
    reward and a sure done on the true last step (so its dream is the real future);
    "copy" predicts its input z and never ends; "lookup" is "replay" that always looks
    its input z up among the frames (its answers follow whatever z it is given). Its
    state carries the frame index (plus one; 0 = not known yet, then the input z is
    looked up among the frames).
    """

    xp = np

    def __init__(self, data: LatentEpisodes, kind: str):
        self.data, self.kind = data, kind
        self.z_size = data.z_size
        self.index = {row.tobytes(): f for f, row in enumerate(data.mu)}
        self.last = np.zeros(len(data.mu), bool)
        self.last[data.frame_offsets[1:] - 1] = True

    def initial_state(self, batch):
        return np.zeros((batch, 1), np.float32), np.zeros((batch, 1), np.float32)

    def step(self, z, a, state=None):
        z = np.asarray(z, np.float32)
        h = self.initial_state(len(z))[0] if state is None else state[0]
        known = (h[:, 0] > 0) & (self.kind != "lookup")
        frame = np.where(
            known, h[:, 0].astype(np.int64) - 1, [self.index.get(r.tobytes(), 0) for r in z]
        )
        nxt = np.where(self.last[frame], frame, frame + 1)
        episode = np.searchsorted(self.data.frame_offsets, frame, side="right") - 1
        step = np.minimum(frame - episode, self.data.step_offsets[1:][episode] - 1)
        if self.kind in ("replay", "lookup"):
            mu, reward = self.data.mu[nxt], self.data.reward[step]
            done = np.where(self.data.done[step] & ~self.last[frame], 30.0, -30.0)
        else:
            mu, reward, done = z, np.zeros(len(z)), np.full(len(z), -30.0)
        mixture = MixtureParams(
            np.zeros((len(z), self.z_size, 1), np.float32),
            mu[:, :, None].astype(np.float32),
            np.full((len(z), self.z_size, 1), -20.0, np.float32),
        )
        new_h = (nxt + 1).astype(np.float32)[:, None]
        return StepOutput(new_h, (new_h, new_h), mixture, reward, done)

    def sample(self, params, tau, rng):
        return sample(params, tau, rng)


@pytest.fixture(scope="module")
def world():
    return simulated()


def test_the_replay_gives_the_quantities_the_simulator_showed(world):
    data, seeds, truth = world
    got = ol.replay_quantities(data, seeds, CONFIG)
    for k in (*ol.QUANTITIES, "person_mask"):
        np.testing.assert_allclose(got[k], truth[k], atol=1e-12, err_msg=k)
    assert 0 < truth["person_mask"].sum() < len(data.mu)


def test_a_replay_that_disagrees_with_the_file_is_refused(world):
    data, seeds, _ = world
    wrong = seeds.copy()
    wrong[2] += 1000  # another room: the recorded rewards no longer follow
    with pytest.raises(ol.ReplayError, match="00002.npz"):
        ol.replay_quantities(data, wrong, CONFIG)


def test_the_mover_source_is_the_movers_dream(world):
    """ "mover" hands the frames and k to the mover's `z` and returns what it gives."""
    data = world[0]

    class Mover:
        def z(self, data_, frames, k):
            assert data_ is data
            return np.full((len(frames), data.mu.shape[1]), k, np.float32) + frames[:, None]

    got = ol.baseline_z(data, np.array([3, 5]), 4, "mover", mover=Mover())
    np.testing.assert_array_equal(got[:, 0], [7.0, 9.0])


def test_the_baselines_by_hand(world):
    data = world[0]
    f0 = data.frame_offsets[1]  # the second episode's first frame: no velocity there
    frames = np.array([f0, f0 + 3])
    np.testing.assert_array_equal(ol.baseline_z(data, frames, 4, "copy"), data.mu[frames])
    real = ol.baseline_z(data, frames, 4, "real")
    np.testing.assert_array_equal(real, data.mu[frames + 4])
    end = data.frame_offsets[2] - 1  # the second episode's last frame: held past its end
    np.testing.assert_array_equal(ol.baseline_z(data, np.array([end - 2]), 4, "real")[0],
                                  data.mu[end])  # fmt: skip
    v = ol.baseline_z(data, frames, 4, "velocity")
    np.testing.assert_array_equal(v[0], data.mu[f0])
    np.testing.assert_allclose(v[1], data.mu[f0 + 3] + 4 * (data.mu[f0 + 3] - data.mu[f0 + 2]))


def map_episodes(side=4, latents=2, lengths=(3, 2), seed=0):
    """Episodes of S x S x K map z (random) and random actions, as `LatentEpisodes`."""
    rng = np.random.default_rng(seed)
    lengths = np.array(lengths)
    frames = int((lengths + 1).sum())
    mu = rng.normal(size=(frames, side * side * latents)).astype(np.float32)
    return LatentEpisodes(
        {
            "mu": mu,
            "logvar": np.zeros_like(mu),
            "action": rng.uniform(-1, 1, (int(lengths.sum()), 2)).astype(np.float32),
            "reward": np.zeros(int(lengths.sum()), np.float32),
            "done": np.concatenate([np.arange(t) == t - 1 for t in lengths]),
            "frame_offsets": np.cumsum([0, *(lengths + 1)]),
            "step_offsets": np.cumsum([0, *lengths]),
            "files": np.array([f"{e:05d}.npz" for e in range(len(lengths))]),
        }
    )


def test_the_warp_baseline_moves_z_by_the_real_actions_ego_motion():
    """ "warp": one ego-motion warp a step with a_t, a_{t+1}, ... (the last action past the
    episode's end); standing still (no advance, no turn) leaves z as copied."""
    side, k = 4, 2
    data = map_episodes(side, k)
    offsets = ego_warp.grid_offsets(side, 4.0)

    def by_hand(frame, actions):
        z = data.mu[frame].reshape(1, side * side, k)
        for a in actions:
            z = ego_warp.warp_maps(z, ego_warp.warp_taps(np.asarray(a)[None], offsets))
        return z.reshape(-1)

    f1 = data.frame_offsets[1]  # the second episode's first frame: its step 3
    got = ol.baseline_z(data, np.array([1, f1]), 2, "warp", offsets)
    np.testing.assert_allclose(got[0], by_hand(1, data.action[1:3]), rtol=1e-6)
    np.testing.assert_allclose(got[1], by_hand(f1, data.action[3:5]), rtol=1e-6)
    past = ol.baseline_z(data, np.array([2]), 3, "warp", offsets)[0]  # steps 2, 2, 2
    np.testing.assert_allclose(past, by_hand(2, data.action[[2, 2, 2]]), rtol=1e-6)
    assert not np.allclose(past, data.mu[2])
    still = map_episodes(side, k)
    still.action[:] = [-1.0, 0.0]  # no advance, no turn
    np.testing.assert_allclose(ol.baseline_z(still, np.array([0, 1]), 2, "warp", offsets),
                               still.mu[[0, 1]], atol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="offsets"):
        ol.baseline_z(data, np.array([0]), 1, "warp")
    with pytest.raises(ValueError, match="baseline"):
        ol.baseline_z(data, np.array([0]), 1, "nope")


def test_the_probe_reads_a_linear_target(world):
    """z is linear in the quantities plus 1 % noise: the probe reads them almost exactly,
    and an unrelated target not at all."""
    data, _seeds, truth = world
    episodes = np.repeat(np.arange(len(data)), data.lengths + 1)
    probe = ol.Probe(data.mu, truth, episodes)
    for name in ("goal_sin", "goal_cos", "goal_distance"):
        y = truth[name]
        pred = probe.predict(name, data.mu)
        assert 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum() > 0.999
    noise = dict(truth, goal_sin=np.random.default_rng(0).normal(size=len(data.mu)))
    pred = ol.Probe(data.mu, noise, episodes).predict("goal_sin", data.mu)
    y = noise["goal_sin"]
    assert 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum() < 0.05


def fidelity_of(kind, world):
    data, _seeds, truth = world
    m = RiggedM(data, kind)
    forced = wm.teacher_forced(m, data)
    dreams = ol.open_loop(m, data, forced, np.random.default_rng(0), 1.0)
    episodes = np.repeat(np.arange(len(data)), data.lengths + 1)
    return ol.fidelity(ol.Probe(data.mu, truth, episodes), data, truth, dreams), dreams


def test_a_perfect_m_dreams_the_real_future(world):
    data = world[0]
    r, dreams = fidelity_of("replay", world)
    for k in ol.HORIZONS:
        d = dreams[k]
        np.testing.assert_array_equal(d["target"], d["start"] + k)
        np.testing.assert_allclose(d["dream"], data.mu[d["target"]], atol=1e-5)
        for group in ("goal_bearing", "person_position", "goal_distance"):
            assert r[k]["relative"][group] == pytest.approx(1.0, abs=1e-6)
            assert r[k]["real"][group] > 0.99
    # at 10 steps the room has moved: copying the last z reads it worse than the dream
    assert r[10]["copy"]["goal_bearing"] < r[10]["dream"]["goal_bearing"] - 0.01
    for k in ol.HORIZONS:  # a flat z: no warp baseline; the dream's error is the real z's
        assert "warp" not in r[k] and r[k]["z_mse"]["real"] == 0.0
        assert r[k]["z_mse"]["dream"] == pytest.approx(0.0, abs=1e-9)
        start, target = dreams[k]["start"], dreams[k]["target"]
        want = np.mean((data.mu[start] - data.mu[target]) ** 2)
        assert r[k]["z_mse"]["copy"] == pytest.approx(want, rel=1e-5)


def test_a_copy_m_scores_as_the_copy_baseline(world):
    r, _ = fidelity_of("copy", world)
    for k in ol.HORIZONS:
        for group in ("goal_bearing", "person_position", "goal_distance"):
            assert r[k]["dream"][group] == pytest.approx(r[k]["copy"][group], abs=1e-6)
    assert r[1]["copy"]["goal_bearing"] > r[10]["copy"]["goal_bearing"]


def test_a_perfect_m_foresees_every_collision(world):
    data = world[0]
    soon = wm.actual_collision_soon(data)
    assert 0 < soon.sum() < len(soon)
    m = RiggedM(data, "replay")
    forced = wm.teacher_forced(m, data)
    hit, risk = wm.forecast_collisions(m, data, forced, np.random.default_rng(0), samples=3)
    assert auc(risk, soon) == 1.0
    np.testing.assert_array_equal(hit, soon)
    assert wm.rates(risk > 0.1, soon) == {
        "precision": 1.0,
        "recall": 1.0,
        "predicted": int(soon.sum()),
        "actual": int(soon.sum()),
    }


def test_heads_on_the_real_future_z_are_the_perfect_forecast(world):
    """An M whose heads answer for whatever z they read: fed the real future z it
    foresees every collision, fed the copied z only the step before each."""
    data = world[0]
    soon = wm.actual_collision_soon(data)
    m = RiggedM(data, "lookup")
    forced = wm.teacher_forced(m, data)
    rng = np.random.default_rng(0)
    hit, risk = wm.forecast_collisions(m, data, forced, rng, source="real")
    assert auc(risk, soon) == 1.0
    np.testing.assert_array_equal(hit, soon)
    hit, risk = wm.forecast_collisions(m, data, forced, rng, source="copy")
    last = np.zeros(len(soon), bool)
    last[data.step_offsets[1:] - 1] = True  # each episode's last step
    np.testing.assert_array_equal(hit, soon & last)
    assert auc(risk, soon) < 1.0


def test_bad_forecast_settings_are_refused(world):
    data = world[0]
    m = RiggedM(data, "replay")
    forced = wm.teacher_forced(m, data)
    with pytest.raises(ValueError, match="source"):
        wm.forecast_collisions(m, data, forced, np.random.default_rng(0), source="nope")
    with pytest.raises(ValueError, match="samples"):
        wm.forecast_collisions(m, data, forced, np.random.default_rng(0), samples=0)
    with pytest.raises(ValueError, match="map M"):  # a rigged M has no map to warp
        wm.forecast_collisions(m, data, forced, np.random.default_rng(0), source="warp")
    with pytest.raises(ValueError, match="pixel mover"):  # "mover" needs a trained one
        wm.forecast_collisions(m, data, forced, np.random.default_rng(0), source="mover")
    with pytest.raises(ValueError, match="pixel mover"):
        ol.baseline_z(data, np.array([0]), 1, "mover")


def test_dream_against_real_summary():
    real = np.array([-0.4, 0.2, 0.9, -0.1])
    d = wm.dream_vs_real(real.copy(), real, ["a", "b", "c", "d"], trained=1)
    assert d["spearman"] == pytest.approx(1.0)
    assert d["trained"] == [{"label": "a", "dream": -0.4, "real": -0.4}]
    flat = wm.dream_vs_real(np.zeros(4), real, list("abcd"), trained=0)
    assert np.isnan(flat["spearman"])  # a dream that ranks nothing


def test_the_controller_set_without_trained_cs_is_random(tmp_path):
    params, labels, trained = wm.controller_set(
        str(tmp_path), "dream", 16, 6, 5, np.random.default_rng(0)
    )
    assert params.shape == (16, (6 + 5) * 2 + 2) and trained == 0
    assert len(set(labels)) == 16 and all(s.startswith("random") for s in labels)
    spread = params.std(axis=1)
    assert spread[0] < 0.1 and spread[-1] > 0.8  # from nearly still to saturated


def test_the_first_episodes(world):
    """`LatentEpisodes.first` (04 --max-episodes, the check's probe set) keeps exactly
    the first n episodes' frames and steps."""
    data = world[0]
    two = data.first(2)
    f, s = data.frame_offsets[2], data.step_offsets[2]
    assert len(two) == 2 and two.files == data.files[:2]
    np.testing.assert_array_equal(two.mu, data.mu[:f])
    np.testing.assert_array_equal(two.logvar, data.logvar[:f])
    for k in ("action", "reward", "done", "outcome"):
        np.testing.assert_array_equal(getattr(two, k), getattr(data, k)[:s])
    np.testing.assert_array_equal(two.step_offsets, data.step_offsets[:3])
    assert two.teacher is None
    assert data.first(len(data)) is data and data.first(99) is data


def test_chunked_lockstep_gives_what_one_batch_gives(world, monkeypatch):
    """The diagnostics step M over the starts in chunks of LOCKSTEP_ROWS (memory): with
    chunks of 5 rows the forecasts and dreams are those of one batch, row for row."""
    data = world[0]
    m = RiggedM(data, "replay")
    forced = wm.teacher_forced(m, data)

    def run():
        rng = np.random.default_rng(0)
        hit, risk = wm.forecast_collisions(m, data, forced, rng, samples=3)
        return hit, risk, ol.open_loop(m, data, forced, rng, 0.0)  # tau 0: no draws

    whole = run()
    assert len(ol.step_frames(data)) * 3 < ol.LOCKSTEP_ROWS  # one chunk by default
    monkeypatch.setattr(ol, "LOCKSTEP_ROWS", 5)
    assert len(ol.lockstep_chunks(12)) == 3 and ol.lockstep_chunks(12)[-1] == slice(10, 12)
    chunked = run()
    np.testing.assert_array_equal(chunked[0], whole[0])
    np.testing.assert_array_equal(chunked[1], whole[1])
    for k in ol.HORIZONS:
        for key in ("start", "target", "dream"):
            np.testing.assert_array_equal(chunked[2][k][key], whole[2][k][key], err_msg=key)
