"""The planner in M (lib/control/dream_planner.py) and 08's --planner."""

import json

import numpy as np
import pytest
from chainer import serializers
from cli_helpers import one_line_error, run, run_here
from PIL import Image

from lib import manifest
from lib.control.agent import WorldModelsAgent
from lib.control.dream_planner import PlannerAgent, PlanSettings, plan
from lib.env import socnavenv as sn
from lib.env.evaluation import evaluate, evaluation_seeds
from lib.models.controller import Controller, n_params, unflatten
from lib.models.mdn_rnn import MDNRNN
from lib.models.vae import ConvVAE

Z, HIDDEN = 8, 16


def random_models(seed=0):
    """A random V (z 8), M (hidden 16, reward and done heads, residual) and C's params."""
    rng = np.random.default_rng(seed)
    vae = ConvVAE(z_size=Z)
    rnn = MDNRNN(z_size=Z, hidden_size=HIDDEN, reward_head=True, done_head=True, residual=True)
    # Heads that vary with h, so candidates' scores differ.
    rnn.reward.W.array[...] = rng.normal(0, 0.5, rnn.reward.W.shape)
    rnn.done.W.array[...] = rng.normal(0, 2.0, rnn.done.W.shape)
    rnn.done.b.array[...] = -2.0
    params = rng.normal(0, 0.5, (1, n_params(Z, HIDDEN))).astype(np.float32)
    return vae, rnn, params


def done_when_advancing():
    """A hand-made M whose done head fires whenever action[0] > 0.

    The LSTM forgets everything each step (forget gate shut, input and output gates
    open), so unit 0 of h is tanh(tanh(10 a[0])): +0.76 for a[0] > 0, -0.76 below.
    The done logit is 20 h0 - 5; each step rewards 0.1, so ending early loses the rest.
    """
    z_size, hidden = 2, 4
    rnn = MDNRNN(z_size=z_size, hidden_size=hidden, n_mixtures=1, reward_head=True, done_head=True)
    for p in rnn.params():
        p.array[...] = 0.0
    rnn.w_x.array[0, z_size + 0] = 10.0  # block a, unit 0 <- action[0]
    rnn.b.array[hidden : 2 * hidden] = 20.0  # input gate open
    rnn.b.array[2 * hidden : 3 * hidden] = -20.0  # forget gate shut
    rnn.b.array[3 * hidden :] = 20.0  # output gate open
    rnn.done.W.array[0, 0] = 20.0
    rnn.done.b.array[0] = -5.0
    rnn.reward.b.array[0] = 0.1
    # C: full speed ahead whatever it sees.
    params = np.zeros((1, n_params(z_size, hidden)), np.float32)
    params[0, -2] = 2.0  # bias of action 0: tanh(2) = 0.96
    return rnn, params


def test_the_planner_avoids_the_action_the_done_head_fires_on():
    rnn, params = done_when_advancing()
    weights, biases = unflatten(params, rnn.z_size, rnn.hidden_size)
    b = 3
    z = np.zeros((b, rnn.z_size), np.float32)
    h, c = rnn.initial_state(b)
    rngs = [np.random.default_rng(i) for i in range(b)]
    settings = PlanSettings(horizon=3, candidates=32, cem_iters=3, sigma=1.0, margin=0.0)
    actions = plan(rnn, weights, biases, z, h, c, rngs, settings)
    c_alone = plan(rnn, weights, biases, z, h, c, rngs, PlanSettings(horizon=3, candidates=1))
    assert (c_alone[:, 0] > 0.9).all()  # C alone advances, and M says that ends it
    assert (actions[:, 0] <= 0).all(), actions
    assert (np.abs(actions) <= 1).all()


def test_one_candidate_is_the_linear_agent():
    vae, rnn, params = random_models()
    seeds = evaluation_seeds(3, 3)
    config = sn.EnvConfig(max_steps=30)
    one = PlanSettings(horizon=4, candidates=1, cem_iters=2)
    _, linear = evaluate(WorldModelsAgent(3, vae, rnn, params), seeds, config, n_envs=3)
    agent = PlannerAgent(3, vae, rnn, params, one)
    _, planned = evaluate(agent, seeds, config, n_envs=3)
    for a, b in zip(linear, planned):
        np.testing.assert_array_equal(a.action, b.action)
    assert agent.steps == sum(len(e.action) for e in linear) and agent.replaced == 0
    more = PlannerAgent(
        3, vae, rnn, params, PlanSettings(horizon=3, candidates=8, sigma=0.5, margin=0)
    )
    _, episodes = evaluate(more, seeds, config, n_envs=3)
    # every step of every episode was planned, and some plan beat C's own action
    assert more.steps == sum(len(e.action) for e in episodes) and more.replaced > 0
    assert more.replaced_fraction == more.replaced / more.steps


@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_batched_planning_equals_one_at_a_time(tau):
    _, rnn, params = random_models(1)
    weights, biases = unflatten(params, Z, HIDDEN)
    rng = np.random.default_rng(5)
    b = 5
    z = rng.standard_normal((b, Z), dtype=np.float32)
    h = rng.uniform(-1, 1, (b, HIDDEN)).astype(np.float32)
    c = rng.uniform(-1, 1, (b, HIDDEN)).astype(np.float32)
    settings = PlanSettings(horizon=4, candidates=16, cem_iters=2, sigma=0.5, tau=tau, margin=0)
    together = plan(
        rnn, weights, biases, z, h, c, [np.random.default_rng(i) for i in range(b)], settings
    )
    alone = np.concatenate(
        [
            plan(rnn, weights, biases, z[i : i + 1], h[i : i + 1], c[i : i + 1],
                 [np.random.default_rng(i)], settings)
            for i in range(b)
        ]
    )  # fmt: skip
    np.testing.assert_allclose(together, alone, atol=1e-5)
    # The planner does change actions here (the test is not vacuous).
    linear = plan(rnn, weights, biases, z, h, c, [rng] * b, PlanSettings(candidates=1))
    assert np.abs(together - linear).max() > 1e-3


def test_planner_agent_in_lockstep_equals_one_at_a_time():
    # On fixed frames rather than in the environment: there a last-bit difference of a
    # GEMM of another batch shape can move a person across a pixel edge, and the
    # frames (so the actions) then differ by far more than rounding.
    vae, rnn, params = random_models(2)
    frames = np.random.default_rng(3).integers(0, 256, (4, 3, 64, 64, 3), dtype=np.uint8)
    seeds = [11, 12, 13]
    settings = PlanSettings(horizon=3, candidates=8, cem_iters=2, tau=0.5, sigma=0.5, margin=0)
    together = PlannerAgent(3, vae, rnn, params, settings)
    together.reset(np.arange(3), seeds)
    batched = np.stack([together.act(None, f) for f in frames], axis=1)  # (3, T, 2)
    for i, seed in enumerate(seeds):
        alone = PlannerAgent(1, vae, rnn, params, settings)
        alone.reset(np.array([0]), [seed])
        actions = np.stack([alone.act(None, f[i : i + 1])[0] for f in frames])
        np.testing.assert_allclose(batched[i], actions, atol=1e-5)
    assert together.replaced > 0


def test_plan_settings_refuse_nonsense():
    for bad in (
        {"horizon": 0},
        {"candidates": 0},
        {"cem_iters": 1.5},
        {"sigma": -1},
        {"margin": -0.1},
        {"tau": float("nan")},
        {"gamma": 0},
        {"gamma": 1.5},
        {"candidates": 4, "elites": 5},
        {"done_pos_weight": 0},
    ):
        with pytest.raises(ValueError):
            PlanSettings(**bad)
    rnn = MDNRNN(z_size=Z, hidden_size=HIDDEN)
    with pytest.raises(ValueError, match="reward and done heads"):
        PlannerAgent(1, ConvVAE(z_size=Z), rnn, np.zeros(n_params(Z, HIDDEN), np.float32))
    # an outcome-head M predicts reward and done: it can be planned with
    outcome_m = MDNRNN(z_size=Z, hidden_size=HIDDEN, outcome_head=True)
    PlannerAgent(1, ConvVAE(z_size=Z), outcome_m, np.zeros(n_params(Z, HIDDEN), np.float32))


# ---------------------------------------------------------------------------
# 08 --planner, on random models saved as 03, 04 and 07 would.
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("planner")
    (d / "models").mkdir()
    vae, rnn, params = random_models()
    controller = Controller(Z, HIDDEN)
    controller.set_flat(params[0])
    sidecars = {
        "vae": (vae, {"config": vae.config()}),
        "rnn_dream": (rnn, {"config": rnn.config(), "done_pos_weight": 2.0}),
        "controller": (controller, {"config": controller.config(), "rnn_mode": "dream"}),
    }
    for name, (model, sidecar) in sidecars.items():
        serializers.save_npz(d / "models" / f"{name}.npz", model)
        manifest.write_json(d / "models" / f"{name}.json", sidecar)
    return d


def test_08_planner_row_json_and_gif(data_dir, tmp_path):
    out = tmp_path / "r.json"
    proc = run(
        "08_test_controller.py", "--planner", "--plan-with", "return", "--horizon", 3, "--candidates", 4,
        "--cem-iters", 2, "--plan-sigma", 0.3, "--plan-elites", 3, "--episodes", 2, "--max-steps", 15,
        "--agent-only", "--record", 1, "--out", out, "--data-dir", data_dir,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert set(report) == {"world_models", "world_models_planner", "meta"}
    assert report["world_models_planner"]["episodes"] == 2
    meta = report["meta"]["planner"]
    assert (meta["horizon"], meta["candidates"], meta["cem_iters"]) == (3, 4, 2)
    assert meta["plan_with"] == "return"
    assert meta["done_pos_weight"] == 2.0 and meta["sigma"] == 0.3 and meta["elites"] == 3
    row = report["world_models_planner"]
    assert 2 <= row["env_steps"] <= 30
    # replaced steps over the planner's own steps (the report rounds to 4 decimals)
    replaced = row["replaced_fraction"] * row["env_steps"]
    assert 0 <= round(replaced) <= row["env_steps"]
    assert replaced == pytest.approx(round(replaced), abs=0.005)
    # GIFs named after --out; the two agents in the same scene side by side
    assert (data_dir / "results" / "r_world_models_planner_0.gif").exists()
    assert (data_dir / "results" / "r_world_models_0.gif").exists()
    both = Image.open(data_dir / "results" / "r_planner_vs_linear_0.gif")
    one = Image.open(data_dir / "results" / "r_world_models_0.gif")
    assert both.size[0] == one.size[0] and both.n_frames >= 2  # two 256-px global views
    assert "| world_models_planner |" in proc.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["--planner", "--horizon", "0"], "--horizon"),
        (["--planner", "--plan-with", "return", "--candidates", "-3"], "--candidates"),
        (["--planner", "--plan-with", "return", "--cem-iters", "two"], "--cem-iters"),
        (["--planner", "--plan-with", "return", "--plan-sigma", "-1"], "--plan-sigma"),
        (["--planner", "--plan-with", "return", "--plan-tau", "nan"], "--plan-tau"),
        (["--planner", "--plan-with", "return", "--plan-gamma", "1.5"], "--plan-gamma"),
        (["--planner", "--plan-with", "return", "--plan-margin", "-1"], "--plan-margin"),
        (["--planner", "--plan-with", "return", "--plan-elites", "0"], "--plan-elites"),
        (
            ["--planner", "--plan-with", "return", "--candidates", "8", "--plan-elites", "9"],
            "--plan-elites: must be <= --candidates (8)",
        ),
        (["--plan-elites", "2"], "--plan-elites needs --planner"),
        (["--horizon", "5"], "--horizon needs --planner"),
        (["--candidates", "8"], "--candidates needs --planner"),
        (["--planner", "--baselines-only"], "exclude each other"),
        (["--planner", "--cem-iters", "2"], "--cem-iters is a flag of --plan-with return"),
        (
            ["--planner", "--plan-with", "return", "--plan-grid", "5"],
            "--plan-grid is a flag of --plan-with lookahead",
        ),
        (["--plan-with", "return"], "--plan-with needs --planner"),
        (["--planner", "--plan-with", "dream"], "--plan-with"),
        (["--planner", "--plan-threshold", "1.5"], "--plan-threshold: must be <= 1"),
        (["--planner", "--plan-threshold", "-0.1"], "--plan-threshold"),
        (["--planner", "--plan-grid", "1"], "--plan-grid: must be >= 2"),
        (["--planner", "--plan-cost", "-1"], "--plan-cost"),
        (["--plan-threshold", "0.2"], "--plan-threshold needs --planner"),
    ],
)
def test_08_refuses_bad_planner_flags(args, words, tmp_path):
    line = one_line_error(run_here("08_test_controller.py", *args, "--data-dir", tmp_path))
    assert words in line


def test_08_planner_needs_m_heads(data_dir, tmp_path):
    d = tmp_path / "d"
    (d / "models").mkdir(parents=True)
    for name in ("vae", "controller"):
        for ext in ("npz", "json"):
            (d / "models" / f"{name}.{ext}").write_bytes(
                (data_dir / "models" / f"{name}.{ext}").read_bytes()
            )
    rnn = MDNRNN(z_size=Z, hidden_size=HIDDEN)
    serializers.save_npz(d / "models" / "rnn_dream.npz", rnn)
    manifest.write_json(d / "models" / "rnn_dream.json", {"config": rnn.config()})
    line = one_line_error(
        run_here(
            "08_test_controller.py",
            "--planner",
            "--plan-with",
            "return",
            "--agent-only",
            "--data-dir",
            d,
        )
    )
    assert "reward and done heads" in line
