"""Stage `claims`: the paper's claims tested on MEASURED quantities of the trained tiny world.

The analytic entropy H(i, k) is model-free (it holds by construction), so every claim below is
judged on what the model does:

  spread_falls_with_step      Spearman rho(step i, measured spread of branches at i) <= -rho_min,
                              for the reward std and for the latent variance of the G branches
  reward_std_tracks_entropy   Spearman rho(H(i, 1), measured reward std at i) >= rho_min
  merged_steps_raise_spread   the merged transition i -> i+k (k > 1) spreads the branches more than
                              the single step i -> i+1 (paired noise), in >= merged_share of pairs
  egrpo_beats_<baseline>      at an equal budget B of forward-equivalents (rollout forwards + 3 x
                              training forward+backward), E-GRPO's held-out reward (mean over
                              seeds) is above the baseline's by more than 2 standard errors of the
                              paired difference over seeds (below by 2: did not hold; between:
                              inconclusive). B = the smallest final budget of
                              all runs; each curve is read at B by linear interpolation (runs
                              overshoot the configured budget by up to one iteration).
  nfe_fraction_to_match_dancegrpo
                              per seed s: target_s = DanceGRPO's held-out reward at B; F_s = the
                              forward-equivalents at which E-GRPO's held-out curve first reaches
                              target_s (linear interpolation between evaluations), divided by B;
                              reported as mean and std over seeds, beside the same
                              fraction in wall-clock seconds. Target: <= claims.target_fraction.
                              A seed that never reaches its target counts as missing (listed).
                              Headline and verdict: the median over ALL seeds (never = +inf, i.e.
                              beyond the budget) <= target_fraction, with a 95% percentile bootstrap
                              interval: seeds resampled with replacement, `bootstrap_resamples`
                              times, fixed generator; an upper end of +inf reads "beyond the budget".
                              The plot's title states the same median and verdict.
  heldout curves              per algorithm, the mean +- standard error over seeds of the held-out
                              value at each multiple of train.heldout.every_forward_equivalents
                              (linear interpolation along each run's curve), beside the base model.
Thresholds come from the config's `claims:` section; every number is written, held or not.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from egrpo.io import atomic_write_json, atomic_write_text, save_figure

log = logging.getLogger("egrpo.claims")


def spearman(a, b) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); nan if either is constant."""
    ra, rb = pd.Series(list(a)).rank(), pd.Series(list(b)).rank()
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def first_crossing(xs, ys, target: float) -> float | None:
    """The smallest x at which the piecewise-linear curve (xs, ys) reaches `target`; None if never."""
    for k, (x, y) in enumerate(zip(xs, ys)):
        if y >= target:
            if k == 0:
                return float(x)
            x0, y0 = xs[k - 1], ys[k - 1]
            return float(x0 + (target - y0) / (y - y0) * (x - x0))
    return None


def heldout_curves(train_metrics: list[dict], metric: str) -> pd.DataFrame:
    """Long table: algorithm, seed, iteration, forward_equivalents, wall_s, value."""
    rows = []
    for m in train_metrics:
        for point in m.get("heldout_curve") or []:
            rows.append({"algorithm": m["algorithm"], "reward_setting": m["reward_setting"], "seed": m["seed"],
                         "iteration": point["iteration"], "forward_equivalents": point["forward_equivalents"],
                         "wall_s": point["wall_s"], "value": point[f"heldout_{metric}"]})
    if not rows:
        from egrpo.errors import UserError
        raise UserError(f"claims: no held-out curve in the train metrics (set train.heldout.every and "
                        f"train.heldout.metrics: [{metric}])")
    return pd.DataFrame(rows)


def _verdict(held: bool | None) -> str:
    return "n/a" if held is None else ("held" if held else "did not hold")


def profile_claims(profile: pd.DataFrame, merged: pd.DataFrame, c: dict) -> dict:
    rho_min = c["rho_min"]
    out = {}
    r_std = spearman(profile["step"], profile["reward_std"])
    r_lat = spearman(profile["step"], profile["latent_variance"])
    out["spread_falls_with_step"] = {
        "rho_step_reward_std": r_std, "rho_step_latent_variance": r_lat, "threshold": -rho_min,
        "held": bool(r_std <= -rho_min and r_lat <= -rho_min),
        "reward_std_per_step": [float(v) for v in profile["reward_std"]],
        "latent_variance_per_step": [float(v) for v in profile["latent_variance"]],
    }
    r_ent = spearman(profile["entropy"], profile["reward_std"])
    out["reward_std_tracks_entropy"] = {
        "rho_entropy_reward_std": r_ent, "rho_entropy_latent_variance": spearman(profile["entropy"], profile["latent_variance"]),
        "threshold": rho_min, "held": bool(r_ent >= rho_min),
    }
    if merged is None or merged.empty:
        out["merged_steps_raise_spread"] = {"held": None, "why": "profile.merge_lengths is empty: nothing measured"}
    else:
        single = profile.set_index("step")
        pairs = []
        for _, row in merged.iterrows():
            base = single.loc[int(row["step"])]
            pairs.append({"step": int(row["step"]), "length": int(row["length"]),
                          "entropy": float(row["entropy"]), "entropy_single": float(base["entropy"]),
                          "reward_std": float(row["reward_std"]), "reward_std_single": float(base["reward_std"]),
                          "latent_variance": float(row["latent_variance"]),
                          "latent_variance_single": float(base["latent_variance"])})
        share_reward = float(np.mean([p["reward_std"] > p["reward_std_single"] for p in pairs]))
        share_latent = float(np.mean([p["latent_variance"] > p["latent_variance_single"] for p in pairs]))
        ratio = float(np.mean([p["reward_std"] / max(p["reward_std_single"], 1e-12) for p in pairs]))
        out["merged_steps_raise_spread"] = {
            "pairs": len(pairs), "share_reward_std_higher": share_reward, "share_latent_variance_higher": share_latent,
            "mean_reward_std_ratio": ratio, "threshold_share": c["merged_share"],
            "held": bool(share_reward >= c["merged_share"]), "per_pair": pairs,
        }
    return out


def at_equal_budget(curves: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """Each run's held-out value and wall-clock at the common budget B = the smallest final
    forward-equivalents of all runs (runs stop at the first iteration that reaches the budget, so
    they overshoot it by different amounts), by linear interpolation along its curve."""
    budget = float(curves.groupby(["algorithm", "seed"])["forward_equivalents"].max().min())
    rows = []
    for (algorithm, seed), g in curves.sort_values("iteration").groupby(["algorithm", "seed"]):
        fe = g["forward_equivalents"].to_numpy(float)
        rows.append({"algorithm": algorithm, "seed": seed, "forward_equivalents": budget,
                     "value": float(np.interp(budget, fe, g["value"])), "wall_s": float(np.interp(budget, fe, g["wall_s"])),
                     "final_forward_equivalents": float(fe[-1]), "final_value": float(g["value"].iloc[-1])})
    return pd.DataFrame(rows).set_index(["algorithm", "seed"]), budget


def comparison_claims(curves: pd.DataFrame, c: dict) -> dict:
    out = {}
    final, budget = at_equal_budget(curves)
    out["budget_forward_equivalents"] = budget
    algorithms = sorted(curves["algorithm"].unique())
    out["final_heldout"] = {a: {"mean": float(final.loc[a, "value"].mean()), "std": float(final.loc[a, "value"].std(ddof=0)),
                                "per_seed": {int(s): float(v) for s, v in final.loc[a, "value"].items()},
                                "forward_equivalents": float(final.loc[a, "forward_equivalents"].mean()),
                                "wall_s": float(final.loc[a, "wall_s"].mean())}
                            for a in algorithms}
    base = curves[curves["iteration"] == 0]
    out["base_heldout"] = float(base["value"].mean()) if not base.empty else math.nan
    if "egrpo" not in algorithms:
        return out
    for other in [a for a in algorithms if a != "egrpo"]:
        seeds = sorted(set(final.loc["egrpo"].index) & set(final.loc[other].index))
        diffs = [float(final.loc[("egrpo", s), "value"] - final.loc[(other, s), "value"]) for s in seeds]
        mean_diff = float(np.mean(diffs)) if diffs else math.nan
        # paired over seeds: standard error of the mean difference (sample std, n - 1)
        se = float(np.std(diffs, ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else math.nan
        enough = len(seeds) >= c["min_seeds"]
        if not enough or not math.isfinite(se):
            held, verdict = None, "inconclusive"
        elif mean_diff > 2 * se:
            held, verdict = True, "held"
        elif mean_diff < -2 * se:
            held, verdict = False, "did not hold"
        else:
            held, verdict = None, "inconclusive"
        out[f"egrpo_beats_{other}"] = {
            "seeds": seeds, "egrpo": out["final_heldout"]["egrpo"]["mean"], other: out["final_heldout"][other]["mean"],
            "mean_difference": mean_diff, "std_difference": float(np.std(diffs)) if diffs else math.nan,
            "standard_error": se, "seeds_won": int(sum(d > 0 for d in diffs)),
            "enough_seeds": enough, "held": held, "verdict": verdict,
            "rule": "held if the mean paired difference > 2 standard errors, did not hold if < -2, else inconclusive",
        }
    if "dancegrpo" in algorithms:
        out["nfe_fraction_to_match_dancegrpo"] = match_fraction(curves, final, c)
    return out


def bootstrap_interval(values: list[float], statistic=np.median, resamples: int = 10000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over `values` (seeds resampled with replacement).

    For n values, draws `resamples` index sets uniformly from {0..n-1}^n with a fixed generator, takes
    the statistic of each, and returns its (1-level)/2 and (1+level)/2 quantiles ("lower" and
    "higher" order statistics, so +inf entries give +inf, never nan)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    stats = np.sort(statistic(x[idx], axis=1))
    lo = stats[int(math.floor((1 - level) / 2 * (resamples - 1)))]
    hi = stats[int(math.ceil((1 + level) / 2 * (resamples - 1)))]
    return float(lo), float(hi)


def on_grid(runs: pd.DataFrame, grid: np.ndarray) -> np.ndarray:
    """[seeds, len(grid)]: each seed's held-out curve of one algorithm, linearly interpolated at `grid`
    forward-equivalents (held at its last value beyond its end)."""
    return np.array([np.interp(grid, r.sort_values("iteration")["forward_equivalents"], r.sort_values("iteration")["value"])
                     for _, r in runs.groupby("seed")])


def curve_table(curves: pd.DataFrame, every: float | None, budget: float) -> pd.DataFrame:
    """Mean and standard error over seeds of each algorithm's held-out value at 0, every, 2*every, ...
    up to the budget (linear interpolation along each run's curve)."""
    if not every:
        every = budget / 10
    grid = np.arange(0, budget + 1e-9, every)
    rows = []
    for algorithm, g in curves.groupby("algorithm"):
        ys = on_grid(g, grid)
        se = ys.std(0, ddof=1) / math.sqrt(len(ys)) if len(ys) > 1 else np.full(len(grid), math.nan)
        rows += [{"algorithm": algorithm, "forward_equivalents": float(x), "mean": float(m), "se": float(e),
                  "seeds": len(ys)} for x, m, e in zip(grid, ys.mean(0), se)]
    return pd.DataFrame(rows)


def match_fraction(curves: pd.DataFrame, final: pd.DataFrame, c: dict) -> dict:
    per_seed, missing = {}, []
    for seed in sorted(set(final.loc["egrpo"].index) & set(final.loc["dancegrpo"].index)):
        target = float(final.loc[("dancegrpo", seed), "value"])
        dance_fe = float(final.loc[("dancegrpo", seed), "forward_equivalents"])
        dance_wall = float(final.loc[("dancegrpo", seed), "wall_s"])
        e = curves[(curves["algorithm"] == "egrpo") & (curves["seed"] == seed)].sort_values("iteration")
        fe = first_crossing(e["forward_equivalents"].tolist(), e["value"].tolist(), target)
        wall = first_crossing(e["wall_s"].tolist(), e["value"].tolist(), target)
        if fe is None:
            missing.append(int(seed))
            continue
        per_seed[int(seed)] = {"target": target, "egrpo_forward_equivalents": fe, "dancegrpo_forward_equivalents": dance_fe,
                               "fraction": fe / dance_fe, "wall_clock_fraction": wall / dance_wall if dance_wall else math.nan}
    fractions = [v["fraction"] for v in per_seed.values()]
    walls = [v["wall_clock_fraction"] for v in per_seed.values()]
    mean = float(np.mean(fractions)) if fractions else None
    # a seed that never reaches the target needs more than the budget: +inf in the median
    everything = fractions + [math.inf] * len(missing)
    median = float(np.median(everything)) if everything else None
    lo, hi = bootstrap_interval(everything, np.median, c.get("bootstrap_resamples", 10000))
    return {
        "median_ci95": [lo if math.isfinite(lo) else None, hi if math.isfinite(hi) else None] if everything else None,
        "ci_rule": "95% percentile bootstrap over seeds of the median over all seeds (never reaching = +inf; "
                   "None = beyond the budget)",
        "mean": mean, "std": float(np.std(fractions)) if fractions else None,
        "mean_over": "the seeds that reach the target", "seeds": len(per_seed) + len(missing),
        "median_all_seeds": median if median is None or math.isfinite(median) else None,
        "wall_clock_mean": float(np.mean(walls)) if walls else None,
        "wall_clock_std": float(np.std(walls)) if walls else None,
        "per_seed": per_seed, "seeds_not_reaching_target": missing, "target": c["target_fraction"],
        # the verdict is the headline's statistic: the median over all seeds (never = +inf)
        "held": bool(median is not None and median <= c["target_fraction"]),
    }


def fraction_title(frac: dict, metric: str) -> str:
    """The headline of the fraction plot: the verdict's own statistic (the median over all seeds,
    never = infinite) and the verdict; the mean over the seeds that reach the target only beside it."""
    missing = len(frac["seeds_not_reaching_target"])
    median = frac.get("median_all_seeds")
    said = "more than the budget" if median is None else f"{median:.2f}"
    verdict = "held" if frac["held"] else "did not hold"
    return (f"E-GRPO reaches DanceGRPO's {metric} at {said} of its forward-equivalents: median over all "
            f"{frac['seeds']} seeds (never = infinite),\ntarget <= {frac['target']:g}: {verdict} "
            f"({frac['seeds'] - missing} of {frac['seeds']} seeds reach it"
            + (f"; their mean {frac['mean']:.2f})" if frac["mean"] is not None else ")"))


def plot_claims(curves: pd.DataFrame, profile: pd.DataFrame, merged: pd.DataFrame | None, result: dict, metric: str, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = {"egrpo": "#d62728", "dancegrpo": "#1f77b4", "mixgrpo": "#2ca02c", "flowgrpo": "#9467bd"}
    for algorithm, g in curves.groupby("algorithm"):
        # per seed curves live on their own x grids: interpolate onto a common one for the band, up
        # to the shortest run's end (beyond it the mean would jump to the few longer runs)
        grid = np.linspace(0, g.groupby("seed")["forward_equivalents"].max().min(), 60)
        ys = on_grid(g, grid)
        mean, std = np.nanmean(ys, 0), np.nanstd(ys, 0)
        color = colors.get(algorithm, None)
        ax.plot(grid, mean, color=color, label=f"{algorithm} (n={len(ys)} seeds)")
        ax.fill_between(grid, mean - std, mean + std, color=color, alpha=0.15)
    frac = result.get("nfe_fraction_to_match_dancegrpo")
    if frac and "dancegrpo" in result.get("final_heldout", {}):
        target = result["final_heldout"]["dancegrpo"]["mean"]
        ax.axhline(target, color=colors["dancegrpo"], ls=":", lw=1)
        for v in frac["per_seed"].values():
            ax.plot([v["egrpo_forward_equivalents"]], [v["target"]], "v", color=colors["egrpo"], ms=7)
        ax.set_title(fraction_title(frac, metric), fontsize=9)
    ax.set_xlabel("forward-equivalents (rollout + 3 x train fwd+bwd)")
    ax.set_ylabel(f"held-out {metric}")
    ax.legend(fontsize=8)
    bx.plot(profile["step"], profile["reward_std"], "o-", color="k", label="measured reward std, k = 1")
    if merged is not None and not merged.empty:
        for k, g in merged.groupby("length"):
            bx.plot(g["step"], g["reward_std"], "s--", alpha=0.8, label=f"merged, k = {k}")
    bx.set_xlabel("denoising step i (branch point)")
    bx.set_ylabel("reward std across the G branches")
    twin = bx.twinx()
    twin.bar(profile["step"], profile["entropy"], alpha=0.15, color="tab:blue")
    twin.set_ylabel("analytic entropy H(i, 1) [nats]")
    rho = result["reward_std_tracks_entropy"]["rho_entropy_reward_std"]
    bx.set_title(f"Measured spread vs analytic entropy (Spearman rho = {rho:.2f})", fontsize=9)
    bx.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def render_markdown(result: dict, metric: str) -> str:
    c = result["claims_config"]
    lines = [f"# Claims on the tiny world (held-out metric: `{metric}`)", ""]
    base = result.get("base_model")
    if base:
        lines += [f"Base model (shipped / pretrained): alignment {base['alignment']:.3f} against chance "
                  f"{base['chance']:.3f} and the rendering's ceiling {base['ceiling']:.3f}.", ""]
    lines += ["| claim | measured | threshold | verdict |", "|---|---|---|---|"]
    s = result["spread_falls_with_step"]
    lines.append(f"| measured spread falls with the step | rho(step, reward std) = {s['rho_step_reward_std']:.2f}, "
                 f"rho(step, latent var) = {s['rho_step_latent_variance']:.2f} | <= {s['threshold']:.2f} | {_verdict(s['held'])} |")
    t = result["reward_std_tracks_entropy"]
    lines.append(f"| reward std tracks the analytic entropy | rho(H, reward std) = {t['rho_entropy_reward_std']:.2f} "
                 f"| >= {t['threshold']:.2f} | {_verdict(t['held'])} |")
    m = result["merged_steps_raise_spread"]
    if m["held"] is None:
        lines.append(f"| merged steps raise the spread | {m['why']} | | n/a |")
    else:
        lines.append(f"| merged steps raise the spread | reward std higher in {m['share_reward_std_higher']:.0%} of "
                     f"{m['pairs']} pairs (latent var: {m['share_latent_variance_higher']:.0%}), mean ratio "
                     f"{m['mean_reward_std_ratio']:.2f} | >= {m['threshold_share']:.0%} | {_verdict(m['held'])} |")
    for key, v in result.items():
        if key.startswith("egrpo_beats_"):
            other = key.removeprefix("egrpo_beats_")
            lines.append(f"| E-GRPO beats {other} at equal forward-equivalents | {v['egrpo']:.4f} vs {v[other]:.4f} "
                         f"(paired diff {v['mean_difference']:+.4f}, standard error {v['standard_error']:.4f}, "
                         f"won {v['seeds_won']}/{len(v['seeds'])} seeds) "
                         f"| diff > 2 SE, >= {c['min_seeds']} seeds | {v['verdict']} |")
    f = result.get("nfe_fraction_to_match_dancegrpo")
    if f:
        fmt = lambda v: "> 1 (beyond the budget)" if v is None else f"{v:.2f}"
        if f.get("median_ci95"):
            lo, hi = f["median_ci95"]
            lines.append(f"| nfe_fraction_to_match_dancegrpo, median over all {f['seeds']} seeds | "
                         f"{fmt(f['median_all_seeds'])}, 95% bootstrap interval [{fmt(lo)}, {fmt(hi)}] | "
                         f"<= {f['target']} | {_verdict(f['held'])} |")
        reached = f["seeds"] - len(f["seeds_not_reaching_target"])
        measured = ("not reached" if f["mean"] is None else
                    f"{f['mean']:.2f} ± {f['std']:.2f} of DanceGRPO's forward-equivalents "
                    f"(wall-clock: {f['wall_clock_mean']:.2f} ± {f['wall_clock_std']:.2f}), mean over the "
                    f"{reached} of {f['seeds']} seeds that reach DanceGRPO's held-out value")
        if f["seeds_not_reaching_target"]:
            median = "more than 1 (the budget)" if f["median_all_seeds"] is None else f"{f['median_all_seeds']:.2f}"
            measured += (f"; seeds {f['seeds_not_reaching_target']} never reach it within the budget; "
                         f"median over all seeds (never = infinite): {median}")
        lines.append(f"| nfe_fraction_to_match_dancegrpo, per seed | {measured} | <= {f['target']} | "
                     f"{_verdict(f['held'])} (on the median over all seeds) |")
    lines += ["", f"## Held-out reward at the equal budget of {result.get('budget_forward_equivalents', 0):.0f} forward-equivalents (mean ± std over seeds)", "",
              "| algorithm | held-out | forward-equivalents | wall-clock [s] |", "|---|---|---|---|"]
    for a, v in result.get("final_heldout", {}).items():
        lines.append(f"| {a} | {v['mean']:.4f} ± {v['std']:.4f} | {v['forward_equivalents']:.0f} | {v['wall_s']:.0f} |")
    table = result.get("heldout_curve_table")
    if table:
        t = pd.DataFrame(table)
        algorithms = list(dict.fromkeys(t["algorithm"]))
        lines += ["", f"## Held-out {metric} along the budget (mean ± standard error over seeds; 0 = the base model)", "",
                  "| forward-equivalents | " + " | ".join(algorithms) + " |", "|---" * (len(algorithms) + 1) + "|"]
        for fe, g in t.groupby("forward_equivalents", sort=True):
            cells = {r["algorithm"]: f"{r['mean']:.4f} ± {r['se']:.4f}" for _, r in g.iterrows()}
            lines.append(f"| {fe:.0f} | " + " | ".join(cells.get(a, "") for a in algorithms) + " |")
        best = max(algorithms, key=lambda a: t[t["algorithm"] == a]["mean"].iloc[-1])
        gain = t[t["algorithm"] == best]["mean"].iloc[-1] - t[t["algorithm"] == best]["mean"].iloc[0]
        lines += ["", f"Best gain over the base at the budget: {best} {gain:+.4f}."]
    lines += ["", f"Base model held-out {metric}: {result.get('base_heldout', math.nan):.4f}.", "",
              "## Tuning budget", "", c["tuning_note"].strip(), ""]
    return "\n".join(lines)


def run_claims(cfg: dict, profile_csv, merged_csv, train_metrics: list, pretrain_json, out_dir) -> dict:
    from egrpo.tracking import stage_run

    c = cfg["claims"]
    metric = c["heldout_metric"]
    out_dir = Path(out_dir)
    profile = pd.read_csv(profile_csv)
    merged = pd.read_csv(merged_csv) if merged_csv and Path(merged_csv).stat().st_size > 1 else None
    metrics = [json.loads(Path(p).read_text()) for p in train_metrics]
    metrics = [m for m in metrics if m["reward_setting"] == c["reward_setting"]] or metrics
    curves = heldout_curves(metrics, metric)
    result = {"claims_config": c, "heldout_metric": metric}
    if pretrain_json and Path(pretrain_json).is_file():
        result["base_model"] = json.loads(Path(pretrain_json).read_text()).get("base_model")
    result.update(profile_claims(profile, merged, c))
    result.update(comparison_claims(curves, c))
    every = cfg["train"]["heldout"]["every_forward_equivalents"]
    if result.get("budget_forward_equivalents"):
        result["heldout_curve_table"] = curve_table(curves, every, result["budget_forward_equivalents"]).to_dict("records")
    with stage_run(cfg, "claims", {"heldout_metric": metric}) as (mlflow, run):
        result["mlflow_run_id"] = run.info.run_id
        atomic_write_json(out_dir / "claims.json", result)
        atomic_write_text(out_dir / "claims.md", render_markdown(result, metric))
        atomic_write_text(out_dir / "heldout_curves.csv", curves.to_csv(index=False))
        plot_claims(curves, profile, merged, result, metric, out_dir / "claims.png")
        frac = result.get("nfe_fraction_to_match_dancegrpo") or {}
        if frac.get("mean") is not None:
            mlflow.log_metric("nfe_fraction_to_match_dancegrpo", frac["mean"])
        for name in ("claims.json", "claims.md", "claims.png"):
            mlflow.log_artifact(str(out_dir / name))
    return result
