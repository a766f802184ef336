"""M's trustworthiness as a simulator (lib/diagnostics/world_model.py and
diagnostics/check_world_model.py): the scores by hand, on a rigged M, and the script on tiny models."""

import json
import os
import shutil

import numpy as np
import pytest
from chainer import serializers
from cli_helpers import one_line_error, run, run_here

from lib import manifest
from lib.control.agent import ENDINGS, ending_kind
from lib.data.latents import LatentEpisodes
from lib.diagnostics import world_model as wm
from lib.models import saved_models
from lib.models.controller import Controller
from lib.models.mdn_rnn import MDNRNN, mixture_log_prob


def episodes(lengths, outcomes, z_size=3, seed=0):
    """LatentEpisodes of the given lengths; each ends with its outcome's reward."""
    rng = np.random.default_rng(seed)
    final = {"collision": -1.0, "out_of_map": -0.5, "success": 1.0}
    frames, steps = np.cumsum([0] + [t + 1 for t in lengths]), np.cumsum([0, *lengths])
    reward = np.full(steps[-1], -0.004, np.float32)
    done = np.zeros(steps[-1], bool)
    for e, o in enumerate(outcomes):
        reward[steps[e + 1] - 1] = final[o]
        done[steps[e + 1] - 1] = True
    return LatentEpisodes(
        {
            "mu": rng.normal(size=(frames[-1], z_size)).astype(np.float32),
            "logvar": np.full((frames[-1], z_size), -2.0, np.float32),
            "action": rng.uniform(-1, 1, (steps[-1], 2)).astype(np.float32),
            "reward": reward,
            "done": done,
            "frame_offsets": frames,
            "step_offsets": steps,
            "files": np.array([f"{e:05d}.npz" for e in range(len(lengths))]),
        }
    )


def test_rates_by_hand():
    r = wm.rates([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert r == {"precision": 2 / 3, "recall": 2 / 3, "predicted": 3, "actual": 3}
    assert wm.rates([0, 0], [0, 0])["precision"] is None


def test_a_collision_is_an_end_with_a_collision_reward():
    got = wm.is_collision(np.array([-1.0, -0.5, 1.0, -1.0]), np.array([1, 1, 1, 0], bool))
    assert got.tolist() == [True, False, False, False]


def test_actual_collision_soon_marks_the_last_steps_of_collisions():
    data = episodes([12, 5], ["collision", "success"])
    soon = wm.actual_collision_soon(data, horizon=10)
    assert soon.tolist() == [False, False] + [True] * 10 + [False] * 5


def test_copy_baseline_by_hand():
    data = episodes([20, 30], ["success", "success"])
    idx = np.concatenate([np.arange(0, 20), np.arange(21, 51)])
    diff = (data.mu[idx + 1] - data.mu[idx]).astype(np.float64)
    sigma = diff.std(axis=0)
    expect = np.mean(0.5 * np.log(2 * np.pi) + np.log(sigma) + 0.5 * (diff / sigma) ** 2)
    assert wm.copy_baseline_nll(data, data.mu, data, data.mu) == pytest.approx(expect)


def test_a_thresholded_dream_ends_in_the_kind_its_reward_is_nearest():
    kinds = ending_kind(np.array([1.0, -1.0, -0.5, 0.9, -0.8, -0.6]))
    assert [ENDINGS[k] for k in kinds] == [
        "success", "collision", "out_of_map", "success", "collision", "out_of_map"
    ]  # fmt: skip


def test_dream_vs_real_reports_the_trained_cs_endings():
    dream_ends = np.array([[0.25, 0.5, 0.125, 0.125], [1.0, 0, 0, 0]])
    real_ends = np.array([[0.9, 0.1, 0, 0], [0, 1.0, 0, 0]])
    d = wm.dream_vs_real([-0.5, 0.3], [0.8, -1.0], ["controller", "random 0"], 1,
                         dream_ends, real_ends)  # fmt: skip
    (row,) = d["trained"]
    assert row["dream_endings"] == {
        "success": 0.25, "collision": 0.5, "out_of_map": 0.125, "timeout": 0.125
    }  # fmt: skip
    assert row["real_endings"]["success"] == 0.9 and row["real_endings"]["collision"] == 0.1
    assert d["spearman"] == pytest.approx(-1.0)


def test_whole_episode_endings_of_a_rigged_m_by_hand():
    """An outcome-head M that ends each step with probability 1 - q, a third for each
    ending: after T steps each ending has (1 - q**T) / 3 and q**T still runs."""
    q = 0.9
    m = MDNRNN(z_size=3, hidden_size=4, outcome_head=True)
    m.outcome.W.array[:] = 0
    m.outcome.b.array[:] = np.log([q, (1 - q) / 3, (1 - q) / 3, (1 - q) / 3]).astype(np.float32)
    data = episodes([12, 3, 8], ["collision", "success", "out_of_map"])
    e = wm.episode_endings(m, data, np.random.default_rng(0), 0.0, near=2)
    for i, t in enumerate((12, 3, 8)):
        third = (1 - q**t) / 3
        np.testing.assert_allclose(e["mass"][i], [third, third, third, q**t], rtol=1e-5)
        # on time: the last 3 steps' share, q**(t-3) (1 - q**3) / 3 of each ending
        late = q ** max(t - 3, 0) * (1 - q ** min(t, 3)) / 3
        np.testing.assert_allclose(e["on_time"][i, :3], [late] * 3, rtol=1e-5)
    assert e["real"].tolist() == [1, 0, 2]
    scores = wm.episode_ending_scores(e)
    assert scores["real_ending"] == pytest.approx(np.mean([(1 - q**t) / 3 for t in (12, 3, 8)]))
    assert scores["by_real_ending"]["collision"]["episodes"] == 1
    assert set(scores["by_real_ending"]) == {"success", "collision", "out_of_map"}


def test_whole_episode_endings_of_a_thresholded_m_read_the_reward_head():
    """Reward and done heads: every step ends with the done probability, as a collision
    when the reward head says -1; a done head that never fires leaves every dream running."""
    data = episodes([5, 7], ["collision", "success"])
    e = wm.episode_endings(rigged_m(-1.0, 20.0), data, np.random.default_rng(0), 0.0)
    np.testing.assert_allclose(e["mass"], [[0, 1, 0, 0]] * 2, atol=1e-6)
    never = wm.episode_endings(rigged_m(-1.0, -30.0), data, np.random.default_rng(0), 0.0)
    np.testing.assert_allclose(never["mass"], [[0, 0, 0, 1]] * 2, atol=1e-6)
    assert wm.episode_ending_scores(never)["real_ending"] == pytest.approx(0.0, abs=1e-6)


def test_spearman():
    a = np.array([0.1, 0.5, 0.3, 0.9])
    assert wm.spearman(a, a**3) == pytest.approx(1.0)
    assert wm.spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(wm.spearman(a, np.ones(4)))


def rigged_m(reward, done_logit):
    """An M whose heads say `reward` and `done_logit` whatever it reads."""
    m = MDNRNN(z_size=3, hidden_size=4, n_mixtures=2, reward_head=True, done_head=True)
    for head, value in ((m.reward, reward), (m.done, done_logit)):
        head.W.array[:] = 0.0
        head.b.array[:] = value
    return m


def test_an_m_that_always_predicts_collisions():
    data = episodes([12, 6, 8], ["collision", "success", "out_of_map"])
    m = rigged_m(-1.0, 20.0)
    forced = wm.teacher_forced(m, data)
    assert forced["h"].shape == (26, 4) and not forced["h"][0].any()  # h before step 0
    scores = wm.head_scores(data, forced)
    assert scores["done"] == {"precision": 3 / 26, "recall": 1.0, "predicted": 26, "actual": 3}
    assert scores["collision_step"]["recall"] == 1.0
    assert scores["reward_mse"] == pytest.approx(np.mean((data.reward + 1.0) ** 2))
    forecast = wm.collision_forecasts(m, data, forced, np.random.default_rng(0))
    assert forecast.all()
    r = wm.rates(forecast, wm.actual_collision_soon(data))
    assert r["recall"] == 1.0 and r["precision"] == pytest.approx(10 / 26)


def test_teacher_forcing_in_lockstep_is_each_episode_on_its_own():
    """All episodes stepped as one batch give what each gives stepped alone."""
    data = episodes([7, 3, 11, 1], ["collision", "success", "out_of_map", "success"], z_size=6)
    m = MDNRNN(z_size=6, hidden_size=5, n_mixtures=3, outcome_head=True)
    forced = wm.teacher_forced(m, data, done_pos_weight=4.0)
    for e in range(len(data)):
        ep, f0, s0 = data.episode(e), data.frame_offsets[e], data.step_offsets[e]
        state = m.initial_state(1)
        for t in range(len(ep["action"])):
            np.testing.assert_allclose(forced["h"][s0 + t], state[0][0], atol=1e-6)
            step = m.step(data.mu[f0 + t][None], ep["action"][t][None], state)
            state = step.state
            p = 1.0 / (1.0 + np.exp(-(float(step.done_logit[0]) - np.log(4.0))))
            assert forced["done_prob"][s0 + t] == pytest.approx(p, abs=1e-6)
            assert forced["reward"][s0 + t] == pytest.approx(float(step.reward[0]), abs=1e-6)
            assert forced["collision"][s0 + t] == wm.predicts_collision(step)[0]
            nll = -float(mixture_log_prob(step.mixture, data.mu[f0 + t + 1][None]).array.mean())
            assert forced["nll"][s0 + t] == pytest.approx(nll, abs=1e-5)
    assert forced["nll"].shape == (22,)


def test_an_m_that_never_ends_forecasts_nothing():
    data = episodes([12], ["collision"])
    m = rigged_m(-1.0, -20.0)
    forced = wm.teacher_forced(m, data)
    assert not wm.collision_forecasts(m, data, forced, np.random.default_rng(0)).any()
    assert wm.head_scores(data, forced)["done"]["recall"] == 0.0


@pytest.fixture
def models(tiny_models):
    return tiny_models


def test_the_script_scores_m_and_compares_dream_with_real(models):
    run("diagnostics/check_world_model.py", "--controllers", 5, "--episodes", 2, "--samples", 2,
        "--probe-episodes", 20, "--data-dir", models)  # fmt: skip
    out = os.path.join(models, "results", "world_model_dream.json")
    with open(out) as f:
        r = json.load(f)["results"]
    assert set(r["done"]) == {"precision", "recall", "predicted", "actual"}
    assert r["test_steps"] == r["open_loop"]["1"]["rows"] > 0  # every step has frame t + 1
    assert set(r["open_loop"]) == {"1", "5", "10"}
    for row in r["open_loop"].values():
        assert set(row) == {"rows", "relative", "real", "dream", "copy", "velocity", "z_mse"}
        for group, rel in row["relative"].items():
            if rel is not None:
                assert rel == pytest.approx(row["dream"][group] / row["real"][group])
    assert r["open_loop"]["1"]["rows"] > r["open_loop"]["10"]["rows"]
    assert set(r["collision_soon_auc"]) == {"dream", "copy", "velocity", "real"}
    ends = r["episode_endings"]
    assert 0 < ends["real_ending_on_time"] <= ends["real_ending"] < 1
    assert sum(row["episodes"] for row in ends["by_real_ending"].values()) == 2  # test split
    for row in ends["by_real_ending"].values():
        assert sum(row["dream"].values()) == pytest.approx(1.0)  # ends, or still runs
    assert r["samples"] == 2 and r["risk_threshold"] == 0.1
    cal = r["collision_soon_calibration"]  # over the same steps as the rates above
    assert sum(b["steps"] for b in cal["bins"]) == r["test_steps"]
    assert cal["frequency"] * r["test_steps"] == pytest.approx(r["collision_soon"]["actual"])
    with open(out[:-5] + ".md") as f:
        table = f.read()
    assert f"{cal['brier']:.4f}; {cal['mean_risk']:.3f} against {cal['frequency']:.3f}" in table
    d = r["dream_vs_real"]
    assert len(d["dream"]) == len(d["real"]) == len(d["labels"]) == 5
    assert all(s.startswith("random") for s in d["labels"])  # no controller.npz here
    assert d["trained"] == []
    assert os.path.getsize(out[:-5] + ".png") > 10_000


def test_the_script_reports_the_trained_cs_endings_in_the_dream_and_the_room(models, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(models, d)
    rnn, _ = saved_models.load_rnn(str(d), "dream")
    c = Controller(rnn.z_size, rnn.hidden_size)
    serializers.save_npz(d / "models" / "controller.npz", c)
    manifest.write_json(d / "models" / "controller.json", {
        "config": c.config(), "rnn_mode": "dream",
        "trained_with": saved_models.model_hashes(str(d), "dream"),
    })  # fmt: skip
    run("diagnostics/check_world_model.py", "--controllers", 3, "--episodes", 4, "--samples", 1,
        "--probe-episodes", 20, "--data-dir", d)  # fmt: skip
    with open(d / "results" / "world_model_dream.json") as f:
        (row,) = json.load(f)["results"]["dream_vs_real"]["trained"]
    assert row["label"] == "07's controller"
    for key in ("dream_endings", "real_endings"):
        assert set(row[key]) == set(ENDINGS)
        assert sum(row[key].values()) == pytest.approx(1.0, abs=1e-3)  # every episode ends
    # the room's are whole episodes: multiples of 1/4
    assert all(v * 4 == pytest.approx(round(v * 4)) for v in row["real_endings"].values())
    table = (d / "results" / "world_model_dream.md").read_text()
    assert (
        "| 07's controller: endings (success / collision / out of map / timeout) | dream " in table
    )


def test_the_script_scores_another_held_out_set(models, tmp_path):
    """--held-out DIR scores DIR's test episodes (here the first of the tiny set's two),
    with the training data's probe; a folder of another room, or none, is refused."""
    ho = tmp_path / "ho" / "rnn_data"
    ho.mkdir(parents=True)
    shutil.copy(os.path.join(models, "rnn_data", "manifest.json"), ho / "manifest.json")
    first = min(os.listdir(os.path.join(models, "rnn_data", "test")))
    (ho / "test").mkdir()
    shutil.copy(os.path.join(models, "rnn_data", "test", first), ho / "test" / first)
    out = tmp_path / "wm.json"
    proc = run_here("diagnostics/check_world_model.py", "--controllers", 0, "--samples", 1,
                    "--probe-episodes", 20, "--held-out", ho.parent, "--out", out,
                    "--data-dir", models)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())["results"]
    assert r["test_episodes"] == 1 and r["held_out"] == str(ho)
    assert "collision_soon_auc_interval" not in r  # one episode: nothing to resample
    assert f"| held-out episodes | 1 | {ho}/test |" in out.with_suffix(".md").read_text()
    mf = json.loads((ho / "manifest.json").read_text())
    mf["identity"]["seed"] += 1  # another seed or policy is fine: the room is what counts
    (ho / "manifest.json").write_text(json.dumps(mf))
    proc = run_here("diagnostics/check_world_model.py", "--controllers", 0, "--samples", 1,
                    "--probe-episodes", 20, "--held-out", ho.parent, "--out", out,
                    "--data-dir", models)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    mf["identity"]["env"]["n_humans"] += 1
    (ho / "manifest.json").write_text(json.dumps(mf))
    err = one_line_error(run_here("diagnostics/check_world_model.py", "--held-out", ho.parent,
                                  "--out", tmp_path / "x.json", "--data-dir", models))  # fmt: skip
    assert "room or view differs" in err and not (tmp_path / "x.json").exists()
    err = one_line_error(run_here("diagnostics/check_world_model.py", "--held-out",
                                  tmp_path / "none", "--data-dir", models))  # fmt: skip
    assert "no 02 data" in err


def test_bootstrap_intervals_resample_the_units():
    rng = np.random.default_rng(0)
    # A constant statistic has a point interval; a mean's interval holds the mean.
    assert wm.bootstrap_interval(lambda pick: 3.0, 5, rng, rounds=50) == (3.0, 3.0)
    x = rng.normal(size=400)
    low, high = wm.bootstrap_interval(lambda pick: x[pick].mean(), 400, rng, rounds=400)
    assert low < x.mean() < high and high - low == pytest.approx(
        2 * 1.645 * x.std() / 20, rel=0.25
    )  # the normal interval's width, sigma / sqrt(400) each side
    # Episodes are the units: a risk that separates every episode perfectly gives [1, 1];
    # draws with no positive episode are drawn again.
    lengths = np.array([3, 4, 2, 5])
    soon = np.concatenate([[0, 1, 1], [0, 0, 0, 0], [1, 1], [0, 0, 0, 0, 0]]).astype(bool)
    assert wm.episode_auc_interval(soon * 0.9 + 0.05, soon, lengths, rng, rounds=100) == (1, 1)
    # Ranks that agree exactly, whatever controllers are drawn twice: Spearman [1, 1].
    a = np.arange(10.0)
    assert wm.spearman_interval(a, 2 * a + 1, rng, rounds=100) == (1.0, 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        wm.bootstrap_interval(lambda pick: 0.0, 1, rng)
    with pytest.raises(ValueError, match="level"):
        wm.bootstrap_interval(lambda pick: 0.0, 3, rng, level=1.0)
    # A statistic that can never be scored gives no interval.
    assert wm.bootstrap_interval(lambda pick: float("nan"), 3, rng, rounds=10) is None


def test_auc_by_lead_scores_each_distance_to_the_collision():
    # Two episodes of 4 steps ending in collision, one of 5 ending elsewhere; horizon 3.
    lengths = np.array([4, 4, 5])
    soon = np.array([0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    # risk: at leads 1 and 2 every positive outscores every negative; at lead 3, 0.1
    # beats none and ties one, 0.4 beats six of seven.
    risk = np.array([0.2, 0.1, 0.6, 0.9, 0.1, 0.4, 0.5, 0.8, 0.3, 0.45, 0.2, 0.2, 0.2])
    by_lead = wm.auc_by_lead(risk, soon, lengths, 4)
    # negatives: 0.2, 0.1, 0.3, 0.45, 0.2, 0.2, 0.2
    assert by_lead[0] == 1.0  # 0.9 and 0.8
    assert by_lead[1] == pytest.approx((1.0 + 1.0) / 2)  # 0.6 and 0.5 beat all 7
    assert by_lead[2] == pytest.approx((0.5 / 7 + 6 / 7) / 2)
    assert by_lead[3] is None  # no step is 4 before a collision among positives
    assert wm.auc_by_lead(risk, np.zeros(13, bool), lengths, 2) == [None, None]


def test_calibration_of_rigged_forecasts_by_hand():
    soon = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0], bool)  # base rate 0.2
    perfect = wm.calibration(soon.astype(float), soon)
    assert perfect["brier"] == 0 and perfect["ece"] == 0
    assert perfect["base_rate_brier"] == pytest.approx(0.16)
    assert [(b["lo"], b["steps"], b["frequency"]) for b in perfect["bins"]] == [
        (0.0, 8, 0.0), (0.9, 2, 1.0)
    ]  # fmt: skip
    base = wm.calibration(np.full(10, 0.2), soon)  # calibrated but blind
    assert base["brier"] == pytest.approx(0.16) and base["ece"] == pytest.approx(0.0)
    timid = wm.calibration(np.where(soon, 0.3, 0.05), soon)  # ranks perfectly, too low
    assert timid["brier"] == pytest.approx((2 * 0.7**2 + 8 * 0.05**2) / 10)
    assert timid["ece"] == pytest.approx(0.8 * 0.05 + 0.2 * 0.7)
    assert timid["mean_risk"] == pytest.approx(0.1) and timid["frequency"] == pytest.approx(0.2)
    assert wm.calibration(np.array([]), np.array([], bool)) is None


def test_the_script_needs_an_m_with_heads(models, tmp_path):
    err = one_line_error(
        run_here("diagnostics/check_world_model.py", "--mode", "reward", "--data-dir", models)
    )
    assert "rnn_reward" in err
    err = one_line_error(run_here("diagnostics/check_world_model.py", "--controllers", "-1"))
    assert "--controllers" in err
    err = one_line_error(run_here("diagnostics/check_world_model.py", "--risk-threshold", "1.5"))
    assert "--risk-threshold" in err
    err = one_line_error(run_here("diagnostics/check_world_model.py", "--samples", "0"))
    assert "--samples" in err
    err = one_line_error(run_here("diagnostics/check_world_model.py", "--trained", "../c"))
    assert "--trained" in err


def test_collision_risk_is_the_forecast_probability():
    """An outcome-head M with constant P(collision) = p per step: risk = 1 - (1 - p)^H."""
    from lib.models.mdn_rnn import MDNRNN

    p = 0.1
    m = MDNRNN(z_size=3, hidden_size=4, outcome_head=True)
    m.outcome.W.array[:] = 0
    m.outcome.b.array[:] = np.log([1 - p, 1e-9, p, 1e-9]).astype(np.float32)
    data = episodes([12, 5], ["collision", "success"])
    forced = wm.teacher_forced(m, data)
    hit, risk = wm.forecast_collisions(m, data, forced, np.random.default_rng(0), horizon=4)
    np.testing.assert_allclose(risk, 1 - (1 - p) ** 4, rtol=1e-5)
    assert not hit.any()  # P(end) = 0.1 never crosses the threshold
    assert wm.predicts_collision(m.step(data.mu[:1], data.action[:1])).all()
