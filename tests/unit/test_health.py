"""The health rules (egrpo/health.py) on logged numbers, each with the case that must flag it and the
one that must not; and on real micro runs: a reward constant within groups is lost signal, a replay
that computes something else than the rollout is a mismatch, a healthy run is healthy."""
import pandas as pd
import pytest
from helpers import train_cfg

from egrpo import health

RULES = {"hacking": {"points": 3, "reward_rise": 0.0, "heldout_drop": 0.02},
         "lost_signal": {"zero_std_ratio": 0.5, "iterations": 3},
         "mismatch": {"ratio_dev": 1e-3},
         "collapse": {"drop": 0.1, "rows": 3}}


def rows(rewards, zero_std=None, dev=None):
    return [{"iteration": i + 1, "reward_mean": r, "zero_std_ratio": (zero_std or [0.0] * len(rewards))[i],
             "ratio_abs_dev_first": (dev or [1e-7] * len(rewards))[i], "logp_gap_first": 0.0}
            for i, r in enumerate(rewards)]


def points(values, metric="alignment"):
    return [{"iteration": 2 * k, "forward_equivalents": 100 * k, f"heldout_{metric}": v} for k, v in enumerate(values)]


def test_hacking_is_the_training_reward_up_while_a_held_out_metric_goes_down():
    climbing = rows([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    flag = health.hacking(climbing, points([0.60, 0.58, 0.55, 0.50]), {"tinyclip"}, RULES["hacking"])
    assert flag["rule"] == "hacking" and flag["iteration"] == 2
    assert flag["line"].startswith("reward hacking suspected from iteration 2: training reward +0.4")
    assert "held-out alignment -0.08 over the last 3 points" in flag["line"]
    assert health.hacking(climbing, points([0.50, 0.55, 0.60, 0.62]), {"tinyclip"}, RULES["hacking"]) is None
    # the held-out curve of the reward it trains on is no evidence against it
    assert health.hacking(climbing, points([0.6, 0.58, 0.55, 0.5], "tinyclip"), {"tinyclip"}, RULES["hacking"]) is None
    falling = rows([0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])   # both going down: a bad run, not hacking
    assert health.hacking(falling, points([0.60, 0.58, 0.55, 0.50]), {"tinyclip"}, RULES["hacking"]) is None
    # trained on the exact ground truth alone, a learned held-out metric that falls is that metric's error
    down = points([0.60, 0.58, 0.55, 0.50], "tinyclip")
    assert health.hacking(climbing, down, {"judge"}, RULES["hacking"]) is None
    assert health.hacking(climbing, down, {"judge", "prompt_color"}, RULES["hacking"])["rule"] == "hacking"


def test_lost_signal_is_a_run_of_iterations_with_tied_groups():
    flag = health.lost_signal(rows([0.5] * 6, zero_std=[0.0, 0.8, 1.0, 0.9, 0.0, 0.0]), RULES["lost_signal"])
    assert flag["iteration"] == 2 and flag["line"].startswith("signal lost: zero-std ratio > 0.5 for 3 iterations")
    assert health.lost_signal(rows([0.5] * 6, zero_std=[0.0, 0.8, 1.0, 0.0, 0.9, 0.9]), RULES["lost_signal"]) is None


def test_mismatch_is_a_first_step_ratio_away_from_one():
    flag = health.mismatch(rows([0.5] * 3, dev=[1e-7, 0.02, 1e-7]), RULES["mismatch"])
    assert flag["iteration"] == 2 and "first-step ratio deviation 0.02 > 0.001" in flag["line"]
    assert health.mismatch(rows([0.5] * 3), RULES["mismatch"]) is None


def test_collapse_is_the_trained_reward_down_with_nothing_up():
    curve = [{"iteration": 2 * k, "heldout_tinyclip": t, "heldout_alignment": a}
             for k, (t, a) in enumerate([(0.40, 0.58), (0.30, 0.50), (0.14, 0.30)])]
    flag = health.collapse(rows([0.5] * 6), curve, {"tinyclip"}, RULES["collapse"])
    assert flag["line"].startswith("collapse: held-out tinyclip -0.26 from the base (0.4 -> 0.14), held-out alignment -0.28")
    rising = [dict(p, heldout_alignment=0.58 + 0.01 * k) for k, p in enumerate(curve)]   # the truth rose: not collapse
    falls = health.collapse(rows([0.5] * 6), rising, {"tinyclip"}, RULES["collapse"])
    assert falls["rule"] == "reward_falls" and falls["line"].startswith(
        "the trained reward falls: held-out tinyclip -0.26 from the base (0.4 -> 0.14), held-out alignment +0.02")
    climbing = [dict(p, heldout_tinyclip=0.40 + 0.1 * k) for k, p in enumerate(rising)]
    assert health.collapse(rows([0.5] * 6), climbing, {"tinyclip"}, RULES["collapse"]) is None
    # without a held-out curve of the trained reward: the training reward's first and last 3 rows
    assert health.collapse(rows([0.6, 0.6, 0.6, 0.3, 0.3, 0.3]), [], {"c"}, RULES["collapse"])["rule"] == "collapse"
    assert health.collapse(rows([0.6, 0.6, 0.6, 0.55, 0.55, 0.55]), [], {"c"}, RULES["collapse"]) is None


def test_two_real_runs_that_go_bad_are_collapse_not_hacking():
    """Full fine-tuning of the one-object base on tinyclip (E-GRPO, seed 99, 128 k forward-equivalents;
    tests/data/health/, docs/health.md): at 1e-4 and 3e-4 the trained reward falls on held-out prompts
    along with the truth. Before the collapse rule, the first was called hacking (from the rollouts'
    noisy reward) and the second healthy."""
    import json

    from helpers import ROOT

    from egrpo.config import validate
    from helpers import micro_config

    defaults = validate(micro_config(ROOT))["health"]
    runs = json.loads((ROOT / "tests/data/health/tinyclip_full_ft.json").read_text())
    for name, run in runs.items():
        verdict = health.assess(run["rows"], run["heldout"], ["tinyclip"], defaults)
        assert [f["rule"] for f in verdict["flags"]] == ["collapse"], (name, verdict)
        assert "held-out tinyclip" in verdict["flags"][0]["line"] and "held-out alignment -" in verdict["flags"][0]["line"]


def test_the_verdict_collects_every_flag():
    bad = rows([0.5] * 4, zero_std=[1.0] * 4, dev=[0.5] * 4)
    verdict = health.assess(bad, [], ["c"], RULES)
    assert verdict["verdict"] == "flagged" and [f["rule"] for f in verdict["flags"]] == ["lost_signal", "mismatch"]
    assert health.assess(rows([0.5] * 4), [], ["c"], RULES) == {"verdict": "healthy", "flags": []}


def test_the_health_panel_draws_every_run_and_titles_a_flagged_one_with_its_line(tmp_path):
    import json

    import pandas as pd

    from egrpo.analysis.plots import plot_health

    paths = []
    for seed, (rewards, heldout) in enumerate([([0.1, 0.3, 0.5, 0.7, 0.9, 1.0, 1.1], [0.60, 0.58, 0.55, 0.50]),
                                               ([0.1, 0.12, 0.13, 0.15, 0.16, 0.18, 0.2], [0.50, 0.52, 0.55, 0.6])]):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        log = pd.DataFrame(rows(rewards))
        log["forward_equivalents"] = 50 * log["iteration"]
        log["group_reward_std"], log["diversity"], log["clip_fraction"] = 0.1, 0.2, 0.3
        log.to_csv(d / "train_log.csv", index=False)
        curve = points(heldout)
        verdict = health.assess(log.to_dict("records"), curve, ["tinyclip"], RULES)
        (d / "metrics.json").write_text(json.dumps({"algorithm": "egrpo", "reward_setting": "tinyclip", "seed": seed,
                                                    "heldout_curve": curve, "health": verdict}))
        paths.append(str(d / "metrics.json"))
    titles = plot_health(paths, tmp_path / "health.png")
    assert (tmp_path / "health.png").stat().st_size > 10_000
    assert titles[0].startswith("egrpo / tinyclip / seed 0: reward hacking suspected from iteration 2")
    assert titles[1] == "egrpo / tinyclip / seed 1: healthy"


def run(tmp_path, tiny_model_dir, **train):
    from egrpo.stages.train import run_train

    cfg = train_cfg(tmp_path, **{"iterations": 4, **train})
    return cfg, run_train(cfg, "dancegrpo", "color", 0, str(tiny_model_dir), None, tmp_path / "o", tmp_path / "r")


def test_a_healthy_micro_run_is_healthy_and_logs_its_health_metrics(tmp_path, tiny_model_dir):
    import pandas as pd

    _, metrics = run(tmp_path, tiny_model_dir)
    assert metrics["health"] == {"verdict": "healthy", "flags": []} and metrics["stopped_by"] is None
    log = pd.read_csv(tmp_path / "o/train_log.csv")
    assert (log["diversity"] > 0).all() and (log["group_reward_std"] > 0).all()
    assert (log["logp_gap_first"] < 1e-4).all()   # fp32: the replay computes what the rollout computed


def test_a_reward_constant_within_groups_is_lost_signal_and_stop_on_ends_the_run(tmp_path, tiny_model_dir, monkeypatch):
    import torch

    from egrpo.rewards import offline

    monkeypatch.setattr(offline, "prompt_color", lambda cfg: lambda images, prompts: torch.full((len(prompts),), 0.5))
    _, metrics = run(tmp_path, tiny_model_dir, iterations=6, stop_on=["lost_signal"])
    flags = metrics["health"]["flags"]
    assert [f["rule"] for f in flags] == ["lost_signal"]
    assert metrics["stopped_by"] == flags[0]["line"] and metrics["iterations"] == 3   # flagged at iteration 3 of 6


def test_a_replay_that_computes_something_else_is_a_mismatch(tmp_path, tiny_model_dir, monkeypatch):
    """The rollout samples and stores log-probs under one velocity, the training replays another
    (here: the velocity scaled by 1.05, as a replay in a lower precision or with another kernel would
    drift): the first-step ratios leave 1 and the rule flags it."""
    from egrpo.train.update import PPOUpdate

    original = PPOUpdate.transition_loss

    def drifted(self, tr, adv, v, v_ref, stats, first_epoch):
        return original(self, tr, adv, v * 1.05, v_ref, stats, first_epoch)

    monkeypatch.setattr(PPOUpdate, "transition_loss", drifted)
    _, metrics = run(tmp_path, tiny_model_dir)
    assert [f["rule"] for f in metrics["health"]["flags"]] == ["mismatch"]
    assert "rollout and training disagree" in metrics["health"]["flags"][0]["line"]


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_kl_to_the_base_is_zero_before_the_first_step_and_costs_nothing_of_the_budget(tmp_path, tiny_model_dir,
                                                                                     finetune):
    """health.kl_to_base: the KL of the policy's transitions to the base model's, measured on the
    rollout before each iteration's first optimizer step, is 0 in the first iteration (the policy is
    the base), positive once it has trained; its reference forwards are counted apart
    (nfe_health_total), and the run is otherwise the same run: same budget, same rewards."""
    from egrpo.config import validate
    from egrpo.stages.train import run_train

    runs = {}
    for measured in (False, True):
        cfg = train_cfg(tmp_path / str(measured), iterations=3, finetune=finetune)
        cfg["health"]["kl_to_base"] = measured
        cfg = validate(cfg)
        metrics = run_train(cfg, "dancegrpo", "color", 0, str(tiny_model_dir), None, tmp_path / f"o{measured}",
                            tmp_path / f"r{measured}")
        runs[measured] = (metrics, pd.read_csv(tmp_path / f"o{measured}/train_log.csv"))
    (plain, plain_log), (metrics, log) = runs[False], runs[True]
    assert plain_log["kl_to_base"].isna().all() and plain["nfe_health_total"] == 0
    assert log["kl_to_base"].iloc[0] == pytest.approx(0.0, abs=1e-10)
    assert (log["kl_to_base"].iloc[1:] > 1e-12).all()
    assert metrics["nfe_health_total"] > 0
    assert metrics["forward_equivalents"] == plain["forward_equivalents"]
    assert log["reward_mean"].tolist() == plain_log["reward_mean"].tolist()


def test_a_real_run_whose_trained_reward_falls_while_the_truth_rises_is_flagged():
    """Full fine-tuning of the compositional base on tinyclip at 1e-3 (tests/data/health/, 2026-12-06):
    MixGRPO's held-out tinyclip fell 0.383 -> 0.176 while the judge rose 0.309 -> 0.420; no hacking
    (the trained reward fell), no collapse (the truth rose): before `reward_falls` it read healthy.
    E-GRPO at the same rate fell on both (tinyclip 0.383 -> 0.084, judge -0.010): collapse. The
    thresholds are those of the config the runs came from (config/config.yaml: hacking sized to the
    noise of one seed's held-out curve)."""
    import json

    from helpers import ROOT

    from egrpo.config import load

    defaults = load(ROOT / "config/config.yaml")["health"]
    runs = json.loads((ROOT / "tests/data/health/tinyclip_lr1e-3_compworld.json").read_text())
    mix = health.assess(runs["mixgrpo"]["rows"], runs["mixgrpo"]["heldout"], ["tinyclip"], defaults)
    assert [f["rule"] for f in mix["flags"]] == ["reward_falls"], mix
    assert mix["flags"][0]["line"].startswith("the trained reward falls: held-out tinyclip -0.207 from the base")
    assert "held-out judge +0.111" in mix["flags"][0]["line"]
    egrpo = health.assess(runs["egrpo"]["rows"], runs["egrpo"]["heldout"], ["tinyclip"], defaults)
    assert [f["rule"] for f in egrpo["flags"]] == ["collapse"], egrpo


def test_a_real_run_that_games_its_reward_is_flagged_as_hacking():
    """Full fine-tuning of the compositional base on prompt_color, a rule-based proxy (the share of
    pixels of each colour the prompt names), at 3e-4 (tests/data/health/, 2026-12-06): MixGRPO's
    held-out prompt_color rose 0.516 -> 0.552 while the judge fell 0.309 -> 0.122, slowly: no window
    of 3 points shows it at the default config's thresholds, the curve from the base does. DanceGRPO's
    prompt_color stayed level (+0.005): its falling judge is no reward gamed."""
    import json

    from helpers import ROOT

    from egrpo.config import load

    defaults = load(ROOT / "config/config.yaml")["health"]
    runs = json.loads((ROOT / "tests/data/health/prompt_color_compworld.json").read_text())
    mix = health.assess(runs["mixgrpo"]["rows"], runs["mixgrpo"]["heldout"], ["prompt_color"], defaults)
    assert [f["rule"] for f in mix["flags"]] == ["hacking"], mix
    assert mix["flags"][0]["line"] == ("reward hacking suspected from iteration 0: training reward +0.036 while "
                                       "held-out judge -0.187 since the base")
    last_window_only = health._hacking_in(runs["mixgrpo"]["heldout"][-3:], "over the last 3 points",
                                          runs["mixgrpo"]["rows"], {"prompt_color"}, defaults["hacking"], rollouts=True)
    assert last_window_only is None
    dance = health.assess(runs["dancegrpo"]["rows"], runs["dancegrpo"]["heldout"], ["prompt_color"], defaults)
    assert dance["verdict"] == "healthy", dance
