"""Baseline policies and the evaluator: rates on 200 seeded episodes, the
summary's contents, and independence from the lockstep batch size."""

import math

import numpy as np
import pytest

from lib.env import evaluation as ev
from lib.env import policies as P
from lib.env import socnavenv as sn
from lib.env.rollouts import Episode

N_EPISODES = 200
SEEDS = ev.evaluation_seeds(0, N_EPISODES)


@pytest.fixture(scope="module")
def results():
    """Summary and episodes of every baseline on the same 200 seeds."""
    out = {}
    for name in P.POLICY_NAMES:
        out[name] = ev.evaluate(P.make_policy(name, 64), SEEDS, n_envs=64)
    return out


def test_every_policy_runs_every_seed_once(results):
    for name, (summary, episodes) in results.items():
        assert summary["episodes"] == N_EPISODES, name
        assert [e.index for e in episodes] == list(range(N_EPISODES))
        assert [e.seed for e in episodes] == [int(s) for s in SEEDS]
        for e in episodes:
            assert e.done[-1] and not e.done[:-1].any()
            assert e.outcome in ev.RATE_KEYS
            assert 1 <= e.length <= sn.MAX_STEPS
            assert np.all(np.abs(e.action) <= 1.0)


def test_greedy_beats_random(results):
    greedy = results["greedy"][0]
    random = results["random"][0]
    assert greedy["success_rate"] > random["success_rate"] + 0.3
    assert greedy["return_mean"] > random["return_mean"]
    # The intervals do not overlap: the gap is not luck.
    assert greedy["success_rate_ci95"][0] > random["success_rate_ci95"][1]


def test_avoidance_lowers_collisions(results):
    assert results["greedy_avoid"][0]["collision_rate"] < results["greedy"][0]["collision_rate"]


def test_oracle_is_the_ceiling(results):
    oracle = results["oracle"][0]
    assert oracle["success_rate"] >= 0.9
    assert oracle["collision_rate"] <= 0.05
    for name in ("random", "brownian", "greedy", "greedy_avoid", "mixed"):
        assert oracle["success_rate"] >= results[name][0]["success_rate"], name


def test_greedy_never_leaves_the_room(results):
    # Greedy drives straight to a goal inside the room; it can only collide.
    summary = results["greedy"][0]
    assert summary["out_of_map_rate"] == 0.0
    assert summary["success_rate"] + summary["collision_rate"] + summary["timeout_rate"] == 1.0


def test_summary_keys_and_rates(results):
    keys = {"episodes", "return_mean", "return_std", "steps_to_goal_mean", "path_length_mean"}
    keys |= {"min_human_distance_mean", "personal_space_compliance"}
    for k in ev.RATE_KEYS:
        keys |= {f"{k}_rate", f"{k}_rate_ci95"}
    for name, (summary, episodes) in results.items():
        assert set(summary) == keys, name
        assert sum(summary[f"{k}_rate"] for k in ev.RATE_KEYS) == pytest.approx(1.0)
        for k in ev.RATE_KEYS:
            count = sum(e.outcome == k for e in episodes)
            assert summary[f"{k}_rate"] == count / N_EPISODES
            lo, hi = summary[f"{k}_rate_ci95"]
            assert 0.0 <= lo <= summary[f"{k}_rate"] <= hi <= 1.0
        rets = [e.ret for e in episodes]
        assert summary["return_mean"] == pytest.approx(np.mean(rets))
        assert summary["return_std"] == pytest.approx(np.std(rets))
        assert 0.0 <= summary["personal_space_compliance"] <= 1.0


def test_summary_metrics_on_hand_made_episodes():
    def episode(outcome, rewards, min_dist, path):
        t = len(rewards)
        done = np.zeros(t, bool)
        done[-1] = True
        return Episode(
            0,
            0,
            outcome,
            np.zeros((t, 2), np.float32),
            np.array(rewards, np.float32),
            done,
            np.array(min_dist),
            np.array(path),
        )

    eps = [
        episode("success", [-0.01, 1.0], [1.0, 0.3], [0.1, 0.1]),
        episode("collision", [-0.01, -0.01, -1.0], [2.0, 0.5, 0.2], [0.0, 0.1, 0.1]),
        episode("success", [-0.01, -0.01, -0.01, 1.0], [np.inf] * 4, [0.1] * 4),
        episode("timeout", [-0.5], [3.0], [0.0]),
    ]
    s = ev.summarize(eps)
    assert s["success_rate"] == 0.5 and s["collision_rate"] == 0.25
    assert s["out_of_map_rate"] == 0.0 and s["timeout_rate"] == 0.25
    assert s["steps_to_goal_mean"] == 3.0  # (2 + 4) / 2
    assert s["path_length_mean"] == pytest.approx((0.2 + 0.2 + 0.4 + 0.0) / 4)
    assert s["min_human_distance_mean"] == pytest.approx((0.3 + 0.2 + 3.0) / 3)  # inf skipped
    assert s["personal_space_compliance"] == pytest.approx((0.5 + 2 / 3 + 1.0 + 1.0) / 4)
    assert s["return_mean"] == pytest.approx(np.mean([0.99, -1.02, 0.97, -0.5]), abs=1e-6)
    none = ev.summarize([episode("collision", [-1.0], [0.1], [0.1])])
    assert none["steps_to_goal_mean"] is None


def test_wilson_interval():
    lo, hi = ev.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert ev.wilson_interval(0, 20)[0] == 0.0 and ev.wilson_interval(0, 20)[1] > 0.1
    assert ev.wilson_interval(20, 20)[1] == 1.0 and ev.wilson_interval(20, 20)[0] < 0.9
    assert ev.wilson_interval(0, 0) == (0.0, 1.0)
    for n in (7, 200, 1000):  # the rate lies in its own interval, exactly
        assert ev.wilson_interval(0, n)[0] == 0.0 and ev.wilson_interval(n, n)[1] == 1.0
    wide = ev.wilson_interval(30, 100, confidence=0.99)
    narrow = ev.wilson_interval(30, 100, confidence=0.9)
    assert wide[0] < narrow[0] < 0.3 < narrow[1] < wide[1]


@pytest.mark.parametrize("name", ["random", "mixed", "greedy_avoid", "brownian"])
def test_results_do_not_depend_on_batch_size(name, results):
    seeds = SEEDS[:100]
    _, one = ev.evaluate(P.make_policy(name, 1), seeds, n_envs=1)
    _, seven = ev.evaluate(P.make_policy(name, 7), seeds, n_envs=7)
    many = results[name][1][:100]
    for a, b, c in zip(one, seven, many):
        assert a.outcome == b.outcome == c.outcome
        assert a.ret == b.ret == c.ret
        np.testing.assert_array_equal(a.action, c.action)
        np.testing.assert_array_equal(b.action, c.action)


def test_evaluation_seeds_are_stable_and_distinct():
    a = ev.evaluation_seeds(0, 50)
    np.testing.assert_array_equal(a, ev.evaluation_seeds(0, 50))
    np.testing.assert_array_equal(a[:10], ev.evaluation_seeds(0, 10))
    assert len(set(a.tolist())) == 50
    assert not set(a.tolist()) & set(ev.evaluation_seeds(1, 50).tolist())


def test_evaluate_records_frames():
    _, episodes = ev.evaluate(P.make_policy("greedy", 4), SEEDS[:4], n_envs=4, record=2)
    assert episodes[0].frames.shape == (episodes[0].length + 1, 256, 256, 3)
    assert episodes[1].frames is not None
    assert episodes[2].frames is None and episodes[3].frames is None


# ---------------------------------------------------------------------------
# What each policy does in a hand-placed state
# ---------------------------------------------------------------------------
def test_greedy_turns_towards_the_goal(make_sim):
    sim = make_sim([0.0, 0.0, 0.0], [2.0, 0.0])
    np.testing.assert_allclose(P.make_policy("greedy", 1).act(sim), [[1.0, 0.0]], atol=1e-6)
    sim = make_sim([0.0, 0.0, 0.0], [0.0, 2.0])  # goal to the left
    np.testing.assert_array_equal(P.make_policy("greedy", 1).act(sim), [[-1.0, 1.0]])
    sim = make_sim([0.0, 0.0, 0.0], [0.0, -2.0])  # to the right
    np.testing.assert_array_equal(P.make_policy("greedy", 1).act(sim), [[-1.0, -1.0]])
    # A small angle is turned in one step, proportionally.
    angle = 0.1
    sim = make_sim([0.0, 0.0, 0.0], [2.0 * math.cos(angle), 2.0 * math.sin(angle)])
    action = P.make_policy("greedy", 1).act(sim)[0]
    assert action[0] == 1.0
    assert action[1] == pytest.approx(angle / (sn.MAX_ROTATION * sn.TIMESTEP), rel=1e-5)


def test_greedy_avoid_stops_for_a_person_in_front(make_sim):
    sim = make_sim([0.0, 0.0, 0.0], [3.0, 0.0], [[0.6, 0.0, math.pi / 2, 0.0]])
    assert P.make_policy("greedy_avoid", 1).act(sim)[0, 0] == -1.0
    sim = make_sim([0.0, 0.0, 0.0], [3.0, 0.0], [[-3.0, -3.0, 0.0, 0.0]])
    assert P.make_policy("greedy_avoid", 1).act(sim)[0, 0] == 1.0


def test_oracle_steers_around_a_person_and_picks_a_candidate(make_sim):
    sim = make_sim([0.0, 0.0, 0.0], [3.0, 0.0], [[0.55, 0.0, 0.0, 0.0]])
    action = P.make_policy("oracle", 1).act(sim)[0]
    assert any(np.allclose(action, c) for c in P.ORACLE_ACTIONS)
    sim.step(action[None].astype(np.float64))
    assert sim.outcome[0] == sn.RUNNING
    sim = make_sim([0.0, 0.0, 0.0], [3.0, 0.0])
    np.testing.assert_array_equal(P.make_policy("oracle", 1).act(sim), [[1.0, 0.0]])


def test_cautious_oracle_gives_a_person_a_wider_berth(make_sim):
    # A person standing 1 m beside the straight line to the goal: the oracle drives
    # past; the cautious oracle (wider clearance, heavier) turns away from them.
    sim = make_sim([0.0, 0.0, 0.0], [3.0, 0.0], [[1.5, 1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(P.make_policy("oracle", 1).act(sim), [[1.0, 0.0]])
    advance, rotation = P.make_policy("cautious_oracle", 1).act(sim)[0]
    assert advance > 0 and rotation < 0
    assert P.CAUTIOUS_SAFETY[1] > P.ORACLE_SAFETY[1] and P.CAUTIOUS_SAFETY[2] > P.ORACLE_SAFETY[2]
    # With nobody near, both drive straight at the goal.
    sim = make_sim([0.0, 0.0, 0.0], [3.0, 0.0])
    np.testing.assert_array_equal(P.make_policy("cautious_oracle", 1).act(sim), [[1.0, 0.0]])


def test_policies_shapes_and_ranges():
    sim = sn.SocNavSim(5)
    sim.reset_seeds(range(5))
    for name in P.POLICY_NAMES:
        policy = P.make_policy(name, 5)
        policy.reset(np.arange(5), np.arange(5))
        for _ in range(3):
            a = policy.act(sim)
            assert a.shape == (5, 2) and a.dtype == np.float32, name
            assert np.all(np.abs(a) <= 1.0) and np.all(np.isfinite(a)), name
    with pytest.raises(ValueError, match="unknown policy"):
        P.make_policy("teleport", 1)


def test_stochastic_policies_follow_their_episode_seed():
    sim = sn.SocNavSim(3)
    sim.reset_seeds([1, 2, 3])
    sub = sn.SocNavSim(1)
    sub.robot[:], sub.goal[:], sub.humans[:] = sim.robot[1:2], sim.goal[1:2], sim.humans[1:2]
    for name in ("random", "brownian", "mixed"):
        a = P.make_policy(name, 3)
        a.reset(np.arange(3), np.array([10, 11, 10]))
        b = P.make_policy(name, 1)
        b.reset(np.array([0]), np.array([11]))
        for _ in range(4):
            act = a.act(sim)
            np.testing.assert_array_equal(act[1], b.act(sub)[0])
            if name != "mixed":  # state-blind: the same seed gives the same actions
                np.testing.assert_array_equal(act[0], act[2])
                assert not np.array_equal(act[0], act[1])


def test_mixed_policy_uses_all_three_behaviours():
    policy = P.make_policy("mixed", 200)
    policy.reset(np.arange(200), SEEDS)
    counts = np.bincount(policy.choice, minlength=3) / 200
    np.testing.assert_allclose(counts, P.MixedPolicy.WEIGHTS, atol=0.1)
