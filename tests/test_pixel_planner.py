"""The planner in the pixel dream (lib/control/pixel_planner.py) and 08 --plan-with pixels:
one candidate is the linear agent, the candidates see the frames the mover makes of their
actions, some plans beat C's, and refusals."""

import json

import chainer
import numpy as np
from chainer import serializers
from cli_helpers import one_line_error, run, run_here
from test_planner import HIDDEN, Z, data_dir, random_models  # noqa: F401  (a fixture)

from lib import manifest
from lib.control import pixel_planner
from lib.control.agent import WorldModelsAgent
from lib.control.dream_planner import PlanSettings
from lib.env import socnavenv as sn
from lib.env.evaluation import evaluate, evaluation_seeds
from lib.models.controller import act_batch, unflatten
from lib.models.pixel_mover import PixelMover, to_frames, to_planes
from lib.models.vae import encode_frames


def test_one_candidate_is_the_linear_agent_and_more_plan():
    vae, rnn, params = random_models()
    seeds = evaluation_seeds(3, 3)
    config = sn.EnvConfig(max_steps=20)
    _, linear = evaluate(WorldModelsAgent(3, vae, rnn, params), seeds, config, n_envs=3)
    one = pixel_planner.PixelPlannerAgent(
        3, vae, rnn, params, PixelMover(), PlanSettings(horizon=3, candidates=1)
    )
    _, planned = evaluate(one, seeds, config, n_envs=3)
    for a, b in zip(linear, planned):
        np.testing.assert_array_equal(a.action, b.action)
    assert one.replaced == 0 and one.steps == sum(len(e.action) for e in linear)
    more = pixel_planner.PixelPlannerAgent(
        3, vae, rnn, params, PixelMover(), PlanSettings(horizon=3, candidates=6, margin=0)
    )
    _, episodes = evaluate(more, seeds, config, n_envs=3)
    assert more.steps == sum(len(e.action) for e in episodes) and more.replaced > 0


def test_the_candidates_see_the_frames_the_mover_makes_of_their_actions():
    """The frames V reads in a plan are frame t moved by each candidate's own actions
    so far (a spy encoder), and its first z is the real frame's."""
    vae, rnn, params = random_models(2)
    sim = sn.SocNavSim(1, sn.EnvConfig())
    sim.reset_seeds([4])
    frame = sim.observe_images()
    mover = PixelMover()
    seen = []

    def spy(frames):
        seen.append(frames.copy())
        return encode_frames(vae, frames)

    settings = PlanSettings(horizon=3, candidates=2, cem_iters=1, sigma=0.8, margin=0)
    agent = pixel_planner.PixelPlannerAgent(1, vae, rnn, params, mover, settings, encoder=spy)
    agent.reset([0], [4])
    agent.act(None, frame)
    assert len(seen) == 1 + 2  # the real frame, then the plans' frames 1 and 2
    np.testing.assert_array_equal(seen[0], frame)
    assert seen[1].shape == (2, 64, 64, 3) and not np.array_equal(seen[1][0], seen[1][1])
    # candidate 0's frame 1: the real frame moved by C's own first action (no frame
    # t - 1 at an episode's start: the field is read from frame t twice)
    weights, biases = unflatten(params, Z, HIDDEN)
    z = encode_frames(vae, frame)[0]
    a = act_batch(weights, biases, None, z, np.zeros((1, HIDDEN), np.float32))
    cur = to_planes(frame)
    with chainer.no_backprop_mode():
        u = mover.field(cur, cur).array
        want = to_frames(mover.render(u, cur, a[:, None])[0].array)
    np.testing.assert_array_equal(seen[1][:1], want)
    assert agent.has_last[0] and np.array_equal(agent.last_frame[0], frame[0])


def test_08_plans_in_the_pixel_dream(data_dir, tmp_path):  # noqa: F811
    d = tmp_path / "d"
    (d / "models").mkdir(parents=True)
    for f in (data_dir / "models").iterdir():
        (d / "models" / f.name).write_bytes(f.read_bytes())
    flags = ("--planner", "--plan-with", "pixels", "--horizon", 3, "--candidates", 4,
             "--episodes", 2, "--max-steps", 12, "--agent-only", "--record", 0,
             "--data-dir", d)  # fmt: skip
    # without a mover: one line naming 04b, nothing written
    line = one_line_error(run_here("08_test_controller.py", *flags))
    assert "mover.npz" in line and "04b_train_mover.py" in line
    assert not (d / "results").exists()
    mover = PixelMover()
    serializers.save_npz(d / "models" / "mover.npz", mover)
    manifest.write_json(d / "models" / "mover.json", {"config": mover.config()})
    run("08_test_controller.py", *flags, "--out", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["meta"]["planner"]["plan_with"] == "pixels"
    assert report["world_models_planner"]["episodes"] == 2
    assert 2 <= report["world_models_planner"]["env_steps"] <= 24
    # M's temperature is not a flag of this planner
    line = one_line_error(run_here("08_test_controller.py", *flags, "--plan-tau", "1"))
    assert "--plan-tau is a flag of --plan-with return, not of pixels" in line
