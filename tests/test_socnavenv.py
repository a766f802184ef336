"""SocNavEnv: dynamics and rewards on hand-placed states, resets, the
Gymnasium API, the vector env, and what the observations show."""

import math

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from lib.env import socnavenv as sn

DT = sn.TIMESTEP
STEP_LEN = sn.MAX_ADVANCE * DT  # m moved per step at full speed
FORWARD = [1.0, 0.0]
STAND = [-1.0, 0.0]
FAR_GOAL = [-3.0, -3.0]


def step(sim, action):
    sim.step(np.asarray([action], np.float64))
    return float(sim.reward[0]), sn.OUTCOMES[int(sim.outcome[0])]


# ---------------------------------------------------------------------------
# Dynamics: outcomes and rewards
# ---------------------------------------------------------------------------
def test_running_step_reward_is_minus_distance_over_1000(make_sim):
    sim = make_sim([0.0, 0.0, 0.0], [3.0, 0.0])
    reward, outcome = step(sim, FORWARD)
    assert outcome == "running"
    assert sim.active[0]
    assert sim.robot[0, 0] == pytest.approx(STEP_LEN)
    assert reward == pytest.approx(-(3.0 - STEP_LEN) / 1000.0 - 1e-5, abs=1e-12)


def test_success_reward_and_threshold(make_sim):
    # Ends 0.61 m from the goal: within 0.65 m.
    sim = make_sim([0.0, 0.0, 0.0], [0.75, 0.0])
    assert step(sim, FORWARD) == (1.0, "success")
    assert not sim.active[0]
    # Ends 0.66 m away: still running, with the distance reward.
    sim = make_sim([0.0, 0.0, 0.0], [0.80, 0.0])
    reward, outcome = step(sim, FORWARD)
    assert outcome == "running"
    assert reward == pytest.approx(-0.66 / 1000.0 - 1e-5, abs=1e-12)


def test_collision_reward(make_sim):
    sim = make_sim([0.0, 0.0, 0.0], FAR_GOAL, [[0.5, 0.0, 0.0, 0.0]])
    assert step(sim, FORWARD) == (-1.0, "collision")
    assert not sim.active[0]
    assert sim.min_dist[0] == pytest.approx(0.5 - STEP_LEN)


def test_out_of_map_reward(make_sim):
    sim = make_sim([3.95, 0.0, 0.0], FAR_GOAL)
    assert step(sim, FORWARD) == (-0.5, "out_of_map")
    assert not sim.active[0]
    # Out through the bottom wall too.
    sim = make_sim([0.0, -3.9, -0.5 * math.pi], [0.0, 2.0])
    assert step(sim, FORWARD) == (-0.5, "out_of_map")


def test_timeout_after_exactly_max_steps(make_sim):
    sim = make_sim([0.0, 0.0, 0.0], [2.0, 2.0], max_steps=7)
    for t in range(6):
        reward, outcome = step(sim, STAND)
        assert outcome == "running", t
        assert reward == pytest.approx(-math.hypot(2.0, 2.0) / 1000.0 - 1e-5, abs=1e-12)
    assert step(sim, STAND) == (-0.5, "timeout")
    assert sim.steps[0] == 7
    assert not sim.active[0]


def test_finished_slot_is_left_alone(make_sim):
    sim = make_sim([3.95, 0.0, 0.0], FAR_GOAL)
    step(sim, FORWARD)
    before = sim.robot.copy()
    assert step(sim, FORWARD) == (0.0, "running")
    np.testing.assert_array_equal(sim.robot, before)
    assert sim.steps[0] == 1


def test_collision_by_closest_approach(make_sim):
    # A fast person walks through the robot within one step: both ends of the
    # step are more than 0.4 m apart, the closest approach is ~0.
    sim = make_sim([0.0, 0.0, 0.0], FAR_GOAL, [[0.6, 0.0, math.pi, 10.0]])
    reward, outcome = step(sim, FORWARD)
    end = math.hypot(sim.robot[0, 0] - sim.humans[0, 0, 0], sim.robot[0, 1] - sim.humans[0, 0, 1])
    assert end > sn.COLLISION_DISTANCE
    assert 0.6 > sn.COLLISION_DISTANCE
    assert (reward, outcome) == (-1.0, "collision")
    assert sim.min_dist[0] == pytest.approx(0.0, abs=1e-9)


def test_near_miss_is_not_a_collision(make_sim):
    # The same crossing 0.5 m to the side: closest approach 0.5 m.
    sim = make_sim([0.0, 0.0, 0.0], FAR_GOAL, [[0.6, 0.5, math.pi, 10.0]])
    reward, outcome = step(sim, FORWARD)
    assert outcome == "running" and reward < 0
    assert sim.min_dist[0] == pytest.approx(0.5)


def test_collision_wins_over_goal(make_sim):
    sim = make_sim([0.0, 0.0, 0.0], [0.5, 0.0], [[0.3, 0.0, 0.0, 0.0]])
    assert step(sim, FORWARD) == (-1.0, "collision")


def test_humans_bounce_off_walls(make_sim):
    wall = sn.MAP_SIZE / 2 - sn.HUMAN_RADIUS
    humans = [
        [3.7, 0.0, 0.0, 1.0],  # walks east into the east wall
        [0.0, -3.7, -0.5 * math.pi, 1.0],  # south into the south wall
        [-3.7, 1.0, math.pi, 1.0],  # west
        [3.7, 3.7, 0.25 * math.pi, 1.4],  # into the north-east corner
    ]
    sim = make_sim([0.0, 0.0, 0.0], FAR_GOAL, humans)
    step(sim, STAND)
    h = sim.humans[0]
    np.testing.assert_allclose(h[0, :2], [2 * wall - 3.8, 0.0], atol=1e-12)
    assert abs(abs(h[0, 2]) - math.pi) < 1e-12  # now walking west
    np.testing.assert_allclose(h[1, :2], [0.0, -(2 * wall - 3.8)], atol=1e-12)
    assert h[1, 2] == pytest.approx(0.5 * math.pi)
    np.testing.assert_allclose(h[2, :2], [-(2 * wall - 3.8), 1.0], atol=1e-12)
    assert h[2, 2] == pytest.approx(0.0, abs=1e-12)
    assert h[3, 2] == pytest.approx(-0.75 * math.pi)  # both components flipped
    assert np.all(np.abs(h[:, :2]) <= wall)
    np.testing.assert_array_equal(h[:, 3], [1.0, 1.0, 1.0, 1.4])


def test_humans_stay_in_the_room_for_long():
    sim = sn.SocNavSim(32, sn.EnvConfig(max_steps=10**6))
    sim.reset_seeds(range(32))
    sim.robot[:, :2] = 100.0  # no robot to collide with; keep the slots running
    wall = sn.MAP_SIZE / 2 - sn.HUMAN_RADIUS
    start = sim.humans.copy()
    for _ in range(400):
        sim.active[:] = True
        sim.step(np.tile(STAND, (32, 1)))
        assert np.all(np.abs(sim.humans[:, :, :2]) <= wall + 1e-12)
    np.testing.assert_array_equal(sim.humans[:, :, 3], start[:, :, 3])
    assert np.abs(sim.humans[:, :, :2] - start[:, :, :2]).max() > 1.0


def test_reset_clearances_over_many_seeds():
    n = 500
    sim = sn.SocNavSim(n)
    sim.reset_seeds(range(n))
    lim = sn.MAP_SIZE / 2 - sn.MARGIN
    rxy = sim.robot[:, None, :2]
    d_h = np.hypot(*(sim.humans[:, :, :2] - rxy).transpose(2, 0, 1))
    d_g = np.hypot(*(sim.goal - sim.robot[:, :2]).T)
    assert d_h.min() >= sn.START_CLEARANCE
    assert d_g.min() >= sn.MIN_GOAL_DISTANCE
    for arr in (sim.robot[:, :2], sim.goal, sim.humans[:, :, :2]):
        assert np.abs(arr).max() <= lim
    heading = sim.robot[:, 2]
    assert heading.min() < -2.5 and heading.max() > 2.5
    assert np.histogram(heading, bins=4, range=(-np.pi, np.pi))[0].min() > 80
    speed = sim.humans[:, :, 3]
    assert speed.min() >= 0.0 and speed.max() < sn.MAX_HUMAN_SPEED
    assert speed.max() > 1.3 and speed.min() < 0.1
    assert np.all(sim.active) and np.all(sim.steps == 0)


def test_reset_slot_depends_only_on_the_seed():
    a = sn.SocNavSim(3)
    a.reset_seeds([5, 6, 7])
    b = sn.SocNavSim(1)
    b.reset_seeds([6])
    np.testing.assert_array_equal(a.humans[1], b.humans[0])
    np.testing.assert_array_equal(a.goal[1], b.goal[0])
    assert not np.array_equal(a.humans[0], a.humans[1])


# ---------------------------------------------------------------------------
# Dynamics: actions
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "wild, tame",
    [([5.0, 5.0], [1.0, 1.0]), ([-7.0, -7.0], [-1.0, -1.0]), ([3.0, -2.0], [1.0, -1.0])],
)
def test_actions_are_clipped_not_mirrored(make_sim, wild, tame):
    a = make_sim([0.0, 0.0, 0.3], FAR_GOAL)
    b = make_sim([0.0, 0.0, 0.3], FAR_GOAL)
    step(a, wild)
    step(b, tame)
    np.testing.assert_array_equal(a.robot, b.robot)


def test_nan_action_stands_still(make_sim):
    sim = make_sim([1.0, -1.0, 0.3], FAR_GOAL)
    reward, outcome = step(sim, [np.nan, np.nan])
    assert outcome == "running"
    np.testing.assert_allclose(sim.robot[0], [1.0, -1.0, 0.3], atol=1e-12)
    assert np.isfinite(reward)


def test_advance_maps_to_speed(make_sim):
    sim = make_sim([0.0, 0.0, 0.0], FAR_GOAL)
    step(sim, STAND)
    np.testing.assert_array_equal(sim.robot[0], [0.0, 0.0, 0.0])
    assert sim.path[0] == 0.0
    step(sim, [0.0, 0.0])
    assert sim.robot[0, 0] == pytest.approx(0.5 * STEP_LEN)
    step(sim, FORWARD)
    assert sim.robot[0, 0] == pytest.approx(1.5 * STEP_LEN)
    assert sim.path[0] == pytest.approx(STEP_LEN)
    # Heading pi/2 moves north.
    sim = make_sim([0.0, 0.0, 0.5 * math.pi], FAR_GOAL)
    step(sim, FORWARD)
    np.testing.assert_allclose(sim.robot[0, :2], [0.0, STEP_LEN], atol=1e-12)


def test_positive_rotation_turns_left(make_sim):
    sim = make_sim([0.0, 0.0, 0.0], FAR_GOAL)
    step(sim, [-1.0, 1.0])
    assert sim.robot[0, 2] == pytest.approx(sn.MAX_ROTATION * DT)
    for _ in range(5):
        step(sim, [1.0, 1.0])
    assert sim.robot[0, 1] > 0.05  # drifted to the left of its start heading
    sim = make_sim([0.0, 0.0, 0.0], FAR_GOAL)
    step(sim, [-1.0, -0.5])
    assert sim.robot[0, 2] == pytest.approx(-0.5 * sn.MAX_ROTATION * DT)


def test_heading_wraps_to_pi(make_sim):
    sim = make_sim([0.0, 0.0, math.pi - 0.01], FAR_GOAL)
    step(sim, [-1.0, 1.0])
    assert sim.robot[0, 2] == pytest.approx(-math.pi - 0.01 + sn.MAX_ROTATION * DT)


def test_sim_rejects_wrong_action_shape():
    sim = sn.SocNavSim(2)
    with pytest.raises(ValueError, match="shape"):
        sim.step(np.zeros((3, 2)))


# ---------------------------------------------------------------------------
# Gymnasium API
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("obs_type", ["image", "vector"])
def test_check_env(obs_type):
    env = gymnasium.make("SocNavEnv-v0", obs_type=obs_type, render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=False)
    check_env(gymnasium.make("SocNavEnv-v0", obs_type=obs_type).unwrapped)


def test_gymnasium_make_passes_arguments():
    env = gymnasium.make("SocNavEnv-v0", obs_type="vector", n_humans=3, max_steps=17)
    assert isinstance(env.unwrapped, sn.SocNavEnv)
    obs, info = env.reset(seed=3)
    assert obs.shape == (6 + 5 * 3,) and obs.dtype == np.float32
    assert env.unwrapped.config.max_steps == 17
    assert info["distance_to_goal"] >= sn.MIN_GOAL_DISTANCE
    image_env = gymnasium.make("SocNavEnv-v0")
    obs, _ = image_env.reset(seed=3)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="obs_type"):
        sn.SocNavEnv(obs_type="pixels")
    with pytest.raises(ValueError, match="render_mode"):
        sn.SocNavEnv(render_mode="human")
    with pytest.raises(ValueError, match="max_steps"):
        sn.SocNavEnv(max_steps=0)


def _trajectory(env, seed, steps=60):
    obs, _ = env.reset(seed=seed)
    actions = np.random.default_rng(99).uniform(-1, 1, (steps, 2)).astype(np.float32)
    out = [obs]
    rewards = []
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        out.append(obs)
        rewards.append(r)
        if term or trunc:
            break
    return np.stack(out), np.array(rewards)


def test_same_seed_same_trajectory_different_seed_differs():
    env = sn.SocNavEnv()
    obs_a, rew_a = _trajectory(env, 11)
    obs_b, rew_b = _trajectory(sn.SocNavEnv(), 11)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(rew_a, rew_b)
    obs_c, _ = _trajectory(env, 12)
    assert not np.array_equal(obs_a[0], obs_c[0])


def test_outcome_only_on_last_step_and_step_after_end_raises():
    env = sn.SocNavEnv(obs_type="vector", max_steps=40)
    for seed in range(6):
        env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        for t in range(40):
            _, reward, term, trunc, info = env.step(rng.uniform(-1, 1, 2))
            if term or trunc:
                break
            assert "outcome" not in info
        assert info["outcome"] in ("success", "collision", "out_of_map", "timeout")
        assert trunc == (info["outcome"] == "timeout")
        assert term == (info["outcome"] != "timeout")
        expected = {"success": 1.0, "collision": -1.0, "out_of_map": -0.5, "timeout": -0.5}
        assert reward == expected[info["outcome"]]
        with pytest.raises(RuntimeError, match="reset"):
            env.step([0.0, 0.0])


def test_env_timeout_truncates_after_exactly_max_steps():
    for max_steps in (5, sn.MAX_STEPS):
        env = sn.SocNavEnv(obs_type="vector", n_humans=0, max_steps=max_steps)
        env.reset(seed=0)
        for t in range(1, max_steps + 1):
            _, reward, term, trunc, info = env.step(np.array(STAND, np.float32))
            assert not term
            assert trunc == (t == max_steps)
        assert info["outcome"] == "timeout" and reward == -0.5


def test_env_outcomes_from_hand_placed_state():
    env = sn.SocNavEnv(obs_type="vector", n_humans=1)
    cases = [
        ([0.0, 0.0, 0.0], [0.75, 0.0], [3.0, 3.0, 0.0, 0.0], "success", 1.0),
        ([0.0, 0.0, 0.0], [-3.0, 0.0], [0.45, 0.0, 0.0, 0.0], "collision", -1.0),
        ([3.95, 0.0, 0.0], [-3.0, 0.0], [0.0, 3.0, 0.0, 0.0], "out_of_map", -0.5),
    ]
    for robot, goal, human, name, value in cases:
        env.reset(seed=0)
        env.sim.robot[0], env.sim.goal[0], env.sim.humans[0, 0] = robot, goal, human
        _, reward, term, trunc, info = env.step(np.array([1, 0]))  # integer action
        assert (info["outcome"], reward, term, trunc) == (name, value, True, False)


def test_env_integer_and_clipped_actions_match_float():
    a, b = sn.SocNavEnv(obs_type="vector"), sn.SocNavEnv(obs_type="vector")
    oa, _ = a.reset(seed=4)
    ob, _ = b.reset(seed=4)
    for act_a, act_b in [([1, -1], [1.0, -1.0]), ([9.0, 0.5], [1.0, 0.5]), ([-3, 2], [-1.0, 1.0])]:
        oa, *_ = a.step(np.array(act_a))
        ob, *_ = b.step(np.array(act_b, np.float32))
        np.testing.assert_array_equal(oa, ob)


def test_render_global_shape():
    env = sn.SocNavEnv(render_mode="rgb_array")
    env.reset(seed=1)
    frame = env.render()
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    assert sn.SocNavEnv().render() is None


# ---------------------------------------------------------------------------
# Vector env
# ---------------------------------------------------------------------------
def test_vector_env_shapes():
    venv = sn.SocNavVectorEnv(4)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (4, 64, 64, 3) and obs.dtype == np.uint8
    assert venv.observation_space.shape == (4, 64, 64, 3)
    obs, rew, term, trunc, info = venv.step(np.zeros((4, 2), np.float32))
    assert obs.shape == (4, 64, 64, 3) and info["outcome"].shape == (4,)
    assert rew.shape == term.shape == trunc.shape == (4,)
    vvec = sn.SocNavVectorEnv(3, obs_type="vector")
    obs, _ = vvec.reset(seed=0)
    assert obs.shape == (3, 31) and obs.dtype == np.float32


def test_vector_sub_env_equals_single_env():
    seeds = [21, 5, 1000]
    venv = sn.SocNavVectorEnv(3, obs_type="vector")
    vobs, _ = venv.reset(seed=seeds)
    for i, s in enumerate(seeds):
        single, _ = sn.SocNavEnv(obs_type="vector").reset(seed=s)
        np.testing.assert_array_equal(vobs[i], single)
    # An int seed s gives sub-env i the seed s + i.
    vobs, _ = venv.reset(seed=40)
    single, _ = sn.SocNavEnv(obs_type="vector").reset(seed=42)
    np.testing.assert_array_equal(vobs[2], single)
    # Image observations agree too, also after steps.
    venv = sn.SocNavVectorEnv(2)
    vobs, _ = venv.reset(seed=[7, 8])
    env = sn.SocNavEnv()
    obs, _ = env.reset(seed=8)
    for t in range(5):
        action = np.array([0.5, 0.1 * t], np.float32)
        vobs, vrew, *_ = venv.step(np.stack([action, action]))
        obs, rew, *_ = env.step(action)
        np.testing.assert_array_equal(vobs[1], obs)
        assert vrew[1] == rew


def test_vector_env_autoreset_next_step():
    venv = sn.SocNavVectorEnv(2, obs_type="vector", n_humans=0, max_steps=3)
    venv.reset(seed=[3, 4])
    single = sn.SocNavEnv(obs_type="vector", n_humans=0, max_steps=3)
    single.reset(seed=4)
    stand = np.tile(STAND, (2, 1))
    for t in range(3):
        obs, rew, term, trunc, info = venv.step(stand)
    np.testing.assert_array_equal(trunc, [True, True])
    np.testing.assert_array_equal(term, [False, False])
    np.testing.assert_array_equal(rew, [-0.5, -0.5])
    assert list(info["outcome"]) == ["timeout", "timeout"]
    assert info["_outcome"].all()
    # The next step resets: action ignored, reward 0, new episode's first obs.
    obs, rew, term, trunc, info = venv.step(np.ones((2, 2)))
    np.testing.assert_array_equal(rew, [0.0, 0.0])
    assert not term.any() and not trunc.any()
    assert not info["_outcome"].any()
    np.testing.assert_array_equal(venv.sim.steps, [0, 0])
    second, _ = single.reset()  # the single env's next episode, same generator
    np.testing.assert_array_equal(obs[1], second)


# ---------------------------------------------------------------------------
# Image observation content
# ---------------------------------------------------------------------------
S = 64
MPP = 8.0 / S  # m per pixel of the egocentric view
FLOOR = np.array(sn.FLOOR_RGB)


def _img(sim):
    return sim.observe_images()[0].astype(int)


def _is_green(px):
    r, g, b = px
    return g > 150 and g > r + 100 and g > b + 100


def test_robot_at_centre_tick_points_up(make_sim):
    img = _img(make_sim([1.0, -0.7, 2.1], [-3.0, 3.0]))
    centre = img[31:33, 31:33].reshape(-1, 3)
    assert np.all(centre[:, 2] > centre[:, 0] + 80)  # blue dominates
    assert np.all(centre[:, 2] > centre[:, 1] + 60)
    above = img[28:31, 31:33].sum(axis=2)  # tick: darker than the floor above
    below = img[34:37, 31:33].sum(axis=2)  # ... and nothing below
    assert np.all(above < FLOOR.sum() - 100)
    assert np.all(below == FLOOR.sum())
    # Sides of the body are bluish.
    for r, c in [(32, 30), (32, 33)]:
        assert img[r, c, 2] > img[r, c, 0] + 40


def test_goal_ahead_is_green_at_the_predicted_pixel(make_sim):
    # Robot facing west; goal 2 m ahead -> 16 px above the centre.
    img = _img(make_sim([1.0, 0.5, math.pi], [-1.0, 0.5]))
    row = int(S / 2 - 2.0 / MPP)
    for r, c in [(row - 1, 31), (row, 32), (row - 2, 33), (row + 1, 30)]:
        assert _is_green(img[r, c]), (r, c, img[r, c])
    green = np.argwhere([[_is_green(p) for p in line] for line in img])
    np.testing.assert_allclose(green.mean(axis=0), [row - 0.5, 31.5], atol=0.6)
    assert not any(_is_green(p) for p in img[S // 2 :].reshape(-1, 3))


def test_goal_to_the_left_is_green_on_the_left_half(make_sim):
    # Facing north (pi/2): 2 m to the robot's left is west (-x).
    img = _img(make_sim([0.5, 0.0, 0.5 * math.pi], [-1.5, 0.0]))
    col = int(S / 2 - 2.0 / MPP)
    assert _is_green(img[31, col]) and _is_green(img[32, col - 1])
    green = np.argwhere([[_is_green(p) for p in line] for line in img])
    assert green[:, 1].max() < S // 2
    assert abs(green[:, 0].mean() - 31.5) < 0.6


def test_goal_outside_view_gives_edge_marker(make_sim):
    # 6.5 m ahead: marker on the top edge, centred.
    img = _img(make_sim([-3.0, 0.0, 0.0], [3.5, 0.0]))
    green = np.argwhere([[_is_green(p) for p in line] for line in img])
    assert len(green) > 4
    assert green[:, 0].max() <= 6
    assert abs(green[:, 1].mean() - 31.5) < 1.0
    # 6.5 m to the right (facing east, goal south): marker on the right edge.
    img = _img(make_sim([0.0, 3.0, 0.0], [0.0, -3.5]))
    green = np.argwhere([[_is_green(p) for p in line] for line in img])
    assert len(green) > 4
    assert green[:, 1].min() >= S - 7
    assert abs(green[:, 0].mean() - 31.5) < 1.0


def test_outside_the_room_is_grey(make_sim):
    # Facing the east wall 1 m away: the wall line at 8 px up, outside beyond.
    img = _img(make_sim([3.0, 0.0, 0.0], [-2.0, 0.0]))
    np.testing.assert_array_equal(img[:20, 20:44], np.broadcast_to(sn.OUTSIDE_RGB, (20, 24, 3)))
    np.testing.assert_array_equal(img[23, 20:44], np.broadcast_to(sn.WALL_RGB, (24, 3)))
    np.testing.assert_array_equal(img[40:, :10], np.broadcast_to(sn.FLOOR_RGB, (24, 10, 3)))
    # Facing away from it: no grey in the top half.
    img = _img(make_sim([3.0, 0.0, math.pi], [-2.0, 1.0]))
    assert not np.any(np.all(img[:32] == sn.OUTSIDE_RGB, axis=2))
    assert np.all(img[S - 1, 20:44] == sn.OUTSIDE_RGB)


def test_human_is_red_where_it_stands(make_sim):
    # Facing east, a person 1.5 m ahead and 1 m to the left.
    img = _img(make_sim([0.0, 0.0, 0.0], [-3.0, -3.0], [[1.5, 1.0, 0.0, 0.5]]))
    row, col = int(S / 2 - 1.5 / MPP), int(S / 2 - 1.0 / MPP)
    block = img[row - 1 : row + 1, col - 1 : col + 1].reshape(-1, 3)
    assert np.all(block[:, 0] > 100)
    assert np.all(block[:, 0] > 2 * block[:, 1]) and np.all(block[:, 0] > 2 * block[:, 2])
    red = np.all([img[..., 0] > 150, img[..., 1] < 100, img[..., 2] < 100], axis=0)
    rows, cols = np.nonzero(red)
    assert abs(rows.mean() - (row - 0.5)) < 1.5 and abs(cols.mean() - (col - 0.5)) < 1.5
    # Mirror position (to the right) is plain floor.
    mirror = img[row - 1 : row + 1, S - col - 1 : S - col + 1]
    assert np.all(mirror == FLOOR)


@pytest.mark.parametrize(
    "heading, direction",
    [(0.0, (0, -1)), (0.5 * math.pi, (-1, 0)), (math.pi, (0, 1)), (-0.5 * math.pi, (1, 0))],
)
def test_human_tick_points_where_they_walk(make_sim, heading, direction):
    # Robot faces east; a person walking east has a tick pointing up (image
    # (col, row) direction (0, -1)), walking north (robot's left) points left.
    img = _img(make_sim([0.0, 0.0, 0.0], [-3.0, -3.0], [[1.5, 1.0, heading, 0.5]]))
    row, col = int(S / 2 - 1.5 / MPP), int(S / 2 - 1.0 / MPP)
    window = img[row - 6 : row + 6, col - 6 : col + 6]
    dark = np.clip(FLOOR.sum() - window.sum(axis=2), 0, None).astype(float)
    rows, cols = np.mgrid[row - 6 : row + 6, col - 6 : col + 6] + 0.5
    offset = np.array([(dark * cols).sum(), (dark * rows).sum()]) / dark.sum() - [col, row]
    assert np.linalg.norm(offset) > 0.3
    assert offset @ direction / np.linalg.norm(offset) > 0.95


def test_sub_pixel_motion_changes_pixels(make_sim):
    base = make_sim([0.0, 0.0, 0.0], [-3.0, -3.0], [[1.5, 1.0, 0.0, 0.5]])
    moved = make_sim([0.0, 0.0, 0.0], [-3.0, -3.0], [[1.53, 1.0, 0.0, 0.5]])  # 0.24 px
    diff = np.abs(_img(base) - _img(moved))
    assert diff.max() > 0
    assert diff.max() < 120  # a partial-coverage change, not a jump
    changed = np.argwhere(diff.sum(axis=2) > 0)
    row = S / 2 - 1.5 / MPP
    assert np.all(np.abs(changed[:, 0] - row) <= 5)  # only around the person


def test_global_render_shows_the_room(make_sim):
    sim = make_sim([0.0, 0.0, 0.0], [2.0, 2.0], [[-2.0, -2.0, 0.0, 0.5]])
    frame = sim.render_global().astype(int)
    assert frame.shape == (1, 256, 256, 3)
    frame = frame[0]
    mpp = 2 * (4.0 + 0.4) / 256
    assert frame[128, 128, 2] > frame[128, 128, 0]  # robot in the middle
    gr, gc = int(128 - 2.0 / mpp), int(128 + 2.0 / mpp)  # goal north-east
    assert _is_green(frame[gr, gc])
    hr, hc = int(128 + 2.0 / mpp), int(128 - 2.0 / mpp) - 4  # person south-west,
    assert frame[hr, hc, 0] > 150 and frame[hr, hc, 1] < 100  # behind its tick
    assert np.all(frame[2, :] == sn.OUTSIDE_RGB)


# ---------------------------------------------------------------------------
# Vector observation
# ---------------------------------------------------------------------------
def test_vector_observation_values(make_sim):
    humans = [
        [0.0, 2.0, math.pi, 0.7],  # 1 m to the robot's left, walking west
        [1.0, 5.0, 0.5 * math.pi, 1.2],  # 3 m ahead, same heading
        [2.0, 2.0, 0.0, 0.0],
        [1.0, 1.0, -0.5 * math.pi, 0.3],
        [-1.0, -1.0, 0.25 * math.pi, 1.0],
    ]
    sim = make_sim([1.0, 2.0, 0.5 * math.pi], [1.0, 4.0], humans)
    v = sim.observe_vectors()
    assert v.shape == (1, 31) and v.dtype == np.float32
    v = v[0]
    expected = [1.0, 2.0, 1.0, 0.0, 2.0, 0.0]
    expected += [0.0, 1.0, 1.0, 0.0, 0.7]
    expected += [3.0, 0.0, 0.0, 1.0, 1.2]
    expected += [0.0, -1.0, -1.0, 0.0, 0.0]
    expected += [-1.0, 0.0, 0.0, -1.0, 0.3]
    expected += [-3.0, 2.0, math.sin(-0.25 * math.pi), math.cos(-0.25 * math.pi), 1.0]
    np.testing.assert_allclose(v, expected, atol=1e-6)
    env = sn.SocNavEnv(obs_type="vector")
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
