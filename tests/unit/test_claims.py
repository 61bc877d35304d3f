"""The claims stage: rank correlation, the crossing point of a held-out curve, the equal-budget
comparison and the headline fraction, on curves whose answers are known in closed form."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from helpers import micro_config
from egrpo.analysis.curves import first_crossing
from egrpo.analysis.runs import heldout_curves
from egrpo.analysis.claims import match_fraction, profile_claims
from egrpo.stages.claims import run_claims
from egrpo.analysis.stats import spearman
from egrpo.config import validate

CLAIMS = {"rho_min": 0.5, "merged_share": 0.75, "min_seeds": 3, "target_fraction": 0.5, "tuning_note": "none"}


def test_spearman_is_rank_based():
    x = [0, 1, 2, 3, 4]
    assert spearman(x, [v**3 for v in x]) == pytest.approx(1.0)         # monotone, not linear
    assert spearman(x, [-math.exp(v) for v in x]) == pytest.approx(-1.0)
    assert spearman(x, [1, 3, 2, 5, 4]) == pytest.approx(0.8)            # 1 - 6*sum d^2/(n(n^2-1)) = 1 - 6*4/120
    assert math.isnan(spearman(x, [1, 1, 1, 1, 1]))


def test_first_crossing_interpolates_linearly():
    xs, ys = [0, 100, 200, 300], [0.1, 0.2, 0.4, 0.5]
    assert first_crossing(xs, ys, 0.3) == pytest.approx(150.0)
    assert first_crossing(xs, ys, 0.05) == 0.0
    assert first_crossing(xs, ys, 0.6) is None
    assert first_crossing([0, 10, 20], [0.0, 0.5, 0.2], 0.25) == pytest.approx(5.0)  # the first time, not the last


def curve_metrics(algorithm, seed, fe_total, values):
    """A train metrics.json with a held-out curve at evenly spaced forward-equivalents."""
    fes = np.linspace(0, fe_total, len(values))
    return {"algorithm": algorithm, "reward_setting": "r", "seed": seed,
            "heldout_curve": [{"iteration": i, "forward_equivalents": float(fe), "wall_s": float(fe) / 10,
                               "heldout_alignment": v} for i, (fe, v) in enumerate(zip(fes, values))]}


def test_headline_fraction_and_comparison_on_known_curves():
    metrics = []
    for seed in range(3):
        # DanceGRPO climbs linearly to 0.5 at 1000; E-GRPO climbs twice as fast and keeps going
        metrics.append(curve_metrics("dancegrpo", seed, 1000, [0.3, 0.35, 0.4, 0.45, 0.5]))
        metrics.append(curve_metrics("egrpo", seed, 1000, [0.3, 0.4, 0.5, 0.6, 0.7]))
        metrics.append(curve_metrics("mixgrpo", seed, 1000, [0.3, 0.3, 0.3, 0.3, 0.3 + 0.01 * seed]))
    from egrpo.analysis.claims import comparison_claims

    out = comparison_claims(heldout_curves(metrics, "alignment"), CLAIMS)
    f = out["nfe_fraction_to_match_dancegrpo"]
    assert f["mean"] == pytest.approx(0.5) and f["std"] == pytest.approx(0.0)
    assert f["wall_clock_mean"] == pytest.approx(0.5)
    assert f["held"] is True and f["seeds_not_reaching_target"] == []
    assert out["egrpo_beats_dancegrpo"]["mean_difference"] == pytest.approx(0.2)
    assert out["egrpo_beats_mixgrpo"]["seeds_won"] == 3
    # identical differences on every seed: standard error 0, so +0.2 is decisive
    assert out["egrpo_beats_dancegrpo"]["verdict"] == "held" and out["egrpo_beats_dancegrpo"]["held"] is True
    assert out["base_heldout"] == pytest.approx(0.3)


def test_a_seed_that_never_matches_is_reported_not_hidden():
    metrics = [curve_metrics("dancegrpo", s, 1000, [0.3, 0.6]) for s in range(3)]
    metrics += [curve_metrics("egrpo", s, 1000, [0.3, 0.7 if s else 0.5]) for s in range(3)]
    curves = heldout_curves(metrics, "alignment")
    final = curves.sort_values("iteration").groupby(["algorithm", "seed"]).tail(1).set_index(["algorithm", "seed"])
    f = match_fraction(curves, final, CLAIMS)
    assert f["seeds_not_reaching_target"] == [0] and sorted(f["per_seed"]) == [1, 2] and f["seeds"] == 3
    assert f["median_all_seeds"] == pytest.approx(0.75)  # median of 0.75, 0.75, inf
    assert f["per_seed"][1]["fraction"] == pytest.approx(0.75)  # 0.3 -> 0.7 over 1000: 0.6 at 750
    assert f["held"] is False


def test_profile_claims_on_a_decreasing_profile():
    steps = np.arange(8)
    profile = pd.DataFrame({"step": steps, "entropy": 1.0 / (1 + steps), "reward_std": 0.1 / (1 + steps) ** 2,
                            "latent_variance": 2.0 - 0.2 * steps})
    merged = pd.DataFrame({"step": [0, 3, 5], "length": [2, 2, 2], "entropy": [1.2, 0.4, 0.3],
                           "reward_std": [0.2, 0.01, 0.001], "latent_variance": [2.5, 1.6, 1.0]})
    out = profile_claims(profile, merged, CLAIMS)
    assert out["spread_falls_with_step"]["held"] and out["spread_falls_with_step"]["rho_step_reward_std"] == pytest.approx(-1)
    assert out["reward_std_tracks_entropy"]["rho_entropy_reward_std"] == pytest.approx(1)
    m = out["merged_steps_raise_spread"]
    # step 0: 0.2 > 0.1 yes; step 3: 0.01 > 0.00625 yes; step 5: 0.001 > 0.00278 no
    assert m["share_reward_std_higher"] == pytest.approx(2 / 3) and m["held"] is False
    assert profile_claims(profile, None, CLAIMS)["merged_steps_raise_spread"]["held"] is None


def test_run_claims_writes_every_output(tmp_path):
    cfg = validate(micro_config(tmp_path, algorithms=["egrpo", "dancegrpo"], seeds=[0, 1, 2],
                                train={"heldout": {"every": 1, "metrics": ["alignment"]}},
                                claims={"enabled": True, "tuning_note": "nothing tuned"}))
    paths = []
    for seed in range(3):
        for algorithm, values in (("dancegrpo", [0.3, 0.4]), ("egrpo", [0.3, 0.6])):
            m = curve_metrics(algorithm, seed, 100, values)
            m["reward_setting"] = "color"
            p = tmp_path / f"{algorithm}{seed}.json"
            p.write_text(json.dumps(m))
            paths.append(p)
    steps = np.arange(4)
    pd.DataFrame({"step": steps, "entropy": [0.9, 0.5, 0.3, 0.1], "reward_std": [0.3, 0.2, 0.1, 0.0],
                  "latent_variance": [4, 3, 2, 1]}).to_csv(tmp_path / "entropy.csv", index=False)
    pd.DataFrame({"step": [0], "length": [2], "entropy": [1.0], "reward_std": [0.4],
                  "latent_variance": [5]}).to_csv(tmp_path / "merged.csv", index=False)
    (tmp_path / "pretrain.json").write_text(json.dumps({"base_model": {"alignment": 0.3, "chance": 0.29, "ceiling": 1.0,
                                                                       "vae_ceiling": 0.98}}))
    result = run_claims(cfg, tmp_path / "entropy.csv", tmp_path / "merged.csv", paths, tmp_path / "pretrain.json",
                        tmp_path / "out")
    for name in ("claims.json", "claims.md", "claims.png", "heldout_curves.csv"):
        assert (tmp_path / "out" / name).is_file()
    saved = json.loads((tmp_path / "out/claims.json").read_text())
    assert saved["nfe_fraction_to_match_dancegrpo"]["mean"] == pytest.approx(1 / 3)  # 0.4 reached at 100/3
    md = (tmp_path / "out/claims.md").read_text()
    assert "nfe_fraction_to_match_dancegrpo" in md and "nothing tuned" in md
    assert ("Base model (shipped / pretrained): alignment 0.300, against chance 0.290 (its images scored under "
            "shuffled captions) and the rendering's ceiling 1.000, through its VAE 0.980.") in md
    headline = next(line for line in md.splitlines() if line.startswith("| nfe_fraction_to_match_dancegrpo"))
    assert "0.33" in headline and headline.rstrip(" |").endswith("held")
    assert result["merged_steps_raise_spread"]["held"] is True


def test_claims_config_needs_a_heldout_curve(tmp_path):
    from egrpo.errors import ConfigError

    with pytest.raises(ConfigError, match="claims.heldout_metric"):
        validate(micro_config(tmp_path, claims={"enabled": True}))


def test_runs_are_compared_at_the_common_budget_not_at_their_overshoot():
    from egrpo.analysis.curves import at_equal_budget

    metrics = [curve_metrics("dancegrpo", 0, 1000, [0.2, 0.4]),     # 0 -> 1000
               curve_metrics("egrpo", 0, 1200, [0.2, 0.3, 0.5])]    # 0, 600, 1200: overshoots by 200
    final, budget = at_equal_budget(heldout_curves(metrics, "alignment"))
    assert budget == 1000
    assert final.loc[("egrpo", 0), "value"] == pytest.approx(0.3 + 0.2 * 400 / 600)
    assert final.loc[("egrpo", 0), "final_value"] == pytest.approx(0.5)
    assert final.loc[("dancegrpo", 0), "wall_s"] == pytest.approx(100.0)


def test_a_difference_within_noise_is_inconclusive_and_a_clear_loss_does_not_hold():
    from egrpo.analysis.claims import comparison_claims

    metrics = []
    for seed, (e, d, m) in enumerate([(0.52, 0.50, 0.60), (0.49, 0.50, 0.61), (0.51, 0.50, 0.62)]):
        metrics += [curve_metrics("egrpo", seed, 100, [0.4, e]), curve_metrics("dancegrpo", seed, 100, [0.4, d]),
                    curve_metrics("mixgrpo", seed, 100, [0.4, m])]
    out = comparison_claims(heldout_curves(metrics, "alignment"), CLAIMS)
    dance = out["egrpo_beats_dancegrpo"]      # +0.02, -0.01, +0.01: mean +0.0067, SE 0.0088
    assert dance["mean_difference"] == pytest.approx(0.02 / 3) and dance["verdict"] == "inconclusive"
    assert dance["held"] is None and dance["seeds_won"] == 2
    assert out["egrpo_beats_mixgrpo"]["verdict"] == "did not hold"


def test_bootstrap_interval_against_closed_forms():
    from egrpo.analysis.stats import bootstrap_interval

    # one value: every resample is that value
    assert bootstrap_interval([0.4, 0.4, 0.4]) == (0.4, 0.4)
    # two values a < b: a resample's median is a (p 1/4), (a+b)/2 (p 1/2) or b (p 1/4): the 2.5% and
    # 97.5% quantiles are a and b
    assert bootstrap_interval([0.2, 0.6]) == (0.2, 0.6)
    # the mean of n normal draws: the interval is about mean +- 1.96 sd / sqrt(n)
    x = np.random.default_rng(1).normal(0, 1, 400)
    lo, hi = bootstrap_interval(x, np.mean)
    assert lo < x.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * x.std(ddof=1) / np.sqrt(len(x)), rel=0.1)
    # a seed that never reaches the target (inf) puts the upper end beyond the budget, not at nan
    lo, hi = bootstrap_interval([0.5, np.inf, np.inf])
    assert lo == 0.5 and hi == np.inf
    # fixed generator: the same interval twice
    assert bootstrap_interval(x, np.mean) == bootstrap_interval(x, np.mean)


def test_headline_interval_and_curve_table(tmp_path):
    from egrpo.analysis.claims import comparison_claims
    from egrpo.analysis.curves import curve_table

    metrics = [curve_metrics("dancegrpo", s, 1000, [0.3, 0.6]) for s in range(4)]
    metrics += [curve_metrics("egrpo", s, 1000, [0.3, 0.7 if s else 0.5]) for s in range(4)]
    curves = heldout_curves(metrics, "alignment")
    f = comparison_claims(curves, CLAIMS)["nfe_fraction_to_match_dancegrpo"]
    # per seed: never (inf), 0.75, 0.75, 0.75 -> median 0.75; resamples with 2+ never-seeds reach inf
    assert f["median_all_seeds"] == pytest.approx(0.75)
    assert f["median_ci95"][0] == pytest.approx(0.75) and f["median_ci95"][1] is None
    table = curve_table(curves, 500, 1000)
    e = table[table["algorithm"] == "egrpo"].set_index("forward_equivalents")
    assert list(e.index) == [0, 500, 1000]
    assert e.loc[0, "mean"] == pytest.approx(0.3) and e.loc[0, "se"] == pytest.approx(0.0)
    # at 1000: 0.5, 0.7, 0.7, 0.7 -> mean 0.65, se = std(ddof=1) / 2
    assert e.loc[1000, "mean"] == pytest.approx(0.65)
    assert e.loc[1000, "se"] == pytest.approx(np.std([0.5, 0.7, 0.7, 0.7], ddof=1) / 2)
    assert e.loc[500, "mean"] == pytest.approx(0.3 + 0.5 * 0.35)


def test_the_fraction_plot_states_the_verdicts_statistic():
    """7 of 8 seeds reach DanceGRPO at a mean of 0.47, the median over all 8 (never = infinite) is 0.53:
    the verdict (target 0.5) and the plot's title both read the median."""
    import math

    import pandas as pd

    from egrpo.analysis.markdown import fraction_title
    from egrpo.analysis.claims import match_fraction

    fractions = [0.1, 0.2, 0.45, 0.5, 0.56, 0.7, 0.78]  # mean 0.47, the 8th seed never reaches it
    rows, final = [], []
    for seed, f in enumerate(fractions + [None]):
        final += [("dancegrpo", seed, 0.5, 100.0, 10.0), ("egrpo", seed, 0.6, 100.0, 10.0)]
        reach = 100.0 * f if f is not None else math.inf
        for x, v in ((0.0, 0.0), (reach, 0.5), (100.0, 0.5)) if f is not None else ((0.0, 0.0), (100.0, 0.4)):
            rows.append({"algorithm": "egrpo", "seed": seed, "iteration": int(x), "forward_equivalents": x,
                         "wall_s": x / 10, "value": v})
    curves = pd.DataFrame(rows)
    table = pd.DataFrame(final, columns=["algorithm", "seed", "value", "forward_equivalents", "wall_s"])
    frac = match_fraction(curves, table.set_index(["algorithm", "seed"]),
                          {"target_fraction": 0.5, "bootstrap_resamples": 200})
    assert frac["mean"] == pytest.approx(sum(fractions) / 7) and frac["median_all_seeds"] == pytest.approx(0.53)
    assert frac["held"] is False
    title = fraction_title(frac, "alignment")
    assert "at 0.53 of its forward-equivalents: median over all 8 seeds" in title and "did not hold" in title
    assert "7 of 8 seeds reach it; their mean 0.47" in title
