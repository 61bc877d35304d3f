"""Markdown of the report's table, of the held-out verdict lines and of the claims."""
from __future__ import annotations

import math

import pandas as pd

from egrpo.analysis.claims import verdict_word
from egrpo.analysis.paired import best_at_equal_compute, verdict
from egrpo.analysis.tables import compute_caveats
from egrpo.rewards import metric_label


def markdown(table: pd.DataFrame, metrics: list[str], baseline: str = "dancegrpo", cmp: pd.DataFrame | None = None,
             base_note: str = "", tolerance: float = 0.1) -> str:
    """The table as Markdown: mean ± std over seeds [the evaluation's SE]; Δ% vs the baseline only for
    rows at its compute; bold only for a row better than every other trained row of its setting by
    the paired comparisons (egrpo/analysis/paired.py), each at equal compute; then the comparisons
    themselves and notes on what ±, SE and the base row are."""
    header = ["algorithm", "reward setting"] + [metric_label(m) for m in metrics]
    header += [f"Δ% vs {baseline} ({metric_label(m)})" for m in metrics]
    header += ["NFE", "fwd-equiv", "wall s", "GPU h", "seeds"] + (["health"] if "health" in table else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    bold = best_at_equal_compute(cmp) if cmp is not None else set()
    fe = {(r["algorithm"], r["reward_setting"]): r.get("forward_equivalents") for _, r in table.iterrows()}
    fmt = lambda v, spec: "" if pd.isna(v) else format(v, spec)
    for _, row in table.iterrows():
        cells = [row["algorithm"], row["reward_setting"]]
        for m in metrics:
            text = f"{row[f'{m}_mean']:.4f}" + ("" if pd.isna(row[f"{m}_std"]) else f" ± {row[f'{m}_std']:.4f}")
            se = row[f"{m}_eval_se"]
            text += "" if pd.isna(se) else f" [SE {se:.4f}]"
            cells.append(f"**{text}**" if (row["reward_setting"], m, row["algorithm"]) in bold else text)
        own, ref = fe.get((row["algorithm"], row["reward_setting"])), fe.get((baseline, row["reward_setting"]))
        equal = own is not None and ref and not pd.isna(own) and abs(own / ref - 1) <= tolerance
        cells += [fmt(row[f"{m}_vs_{baseline}_pct"], "+.1f") if equal else "" for m in metrics]
        cells += [fmt(row.get("nfe_total"), ".0f"), fmt(row.get("forward_equivalents"), ".0f"),
                  fmt(row.get("wall_s"), ".1f"), fmt(row.get("gpu_hours"), ".2f"), str(int(row["seeds"]))]
        cells += [row["health"] if isinstance(row["health"], str) else ""] if "health" in table else []
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    has_se = any(table[f"{m}_eval_se"].notna().any() for m in metrics)
    notes = ["", "± std over seeds; " + ("[SE] the evaluation's standard error of one row's mean (per-prompt "
             "means), averaged over seeds; a difference of two rows has a much smaller paired SE (below). "
             if has_se else "") + f"Δ% only for rows at {baseline}'s compute (forward-equivalents within "
             f"{tolerance:.0%}). Bold: better than every other trained row of its reward setting at equal compute "
             "(paired, beyond 2 SE)" + ("." if cmp is not None else "; nothing is bold without the per-image "
                                        "scores (the report has them, MLflow alone does not).")]
    if base_note:
        notes.append(base_note)
    notes += compute_caveats(table, baseline)
    if cmp is not None and not cmp.empty:
        notes += ["", "## Paired comparisons (same prompts, same noise)", "",
                  "difference of means; paired SE over prompts (evaluation noise), seed SE over seeds (training "
                  "noise, with 2 or more); verdict on the larger SE: better / worse beyond 2 SE, else within noise.",
                  ""]
        for (setting, metric), g in cmp.groupby(["reward_setting", "metric"], sort=False):
            notes.append(f"- {setting}, {metric_label(metric)}:")
            for _, c in g.iterrows():
                seed = "" if pd.isna(c["seed_se"]) else f", seed SE {c['seed_se']:.4f} over {c['seeds']} seeds"
                compute = "" if c["equal_compute"] else f" (compute ratio {c['compute_ratio']:.2f})"
                paired = "n/a" if pd.isna(c["paired_se"]) else f"{c['paired_se']:.4f}"
                notes.append(f"  - {c['algorithm']} vs {c['against']}: {c['difference']:+.4f} (paired SE "
                             f"{paired} over {c['prompts']} prompts{seed}): {c['verdict']}{compute}")
    return "\n".join(lines + notes) + "\n"


def per_task_markdown(table: pd.DataFrame, metric: str = "judge") -> str:
    """The compositional world's scores per task, one column per task and split (held-out
    compositions apart), rows per algorithm and reward setting: mean ± std over seeds."""
    if table.empty or metric not in set(table["metric"]):
        return ""
    t = table[table["metric"].isin([metric, f"{metric}_accuracy"])]
    groups = list(dict.fromkeys(t["group"]))
    lines = ["", f"## Per task: {metric} (share of what each prompt asks; accuracy = all of it)", "",
             "| algorithm | reward setting | value | " + " | ".join(g.split(":", 1)[-1] for g in groups) + " |",
             "|---|---|---|" + "---|" * len(groups)]
    for (algorithm, setting, m), g in t.groupby(["algorithm", "reward_setting", "metric"], sort=False):
        cells = {r["group"]: f"{r['mean']:.3f}" + ("" if pd.isna(r["std"]) else f" ± {r['std']:.3f}")
                 for _, r in g.iterrows()}
        lines.append(f"| {algorithm} | {setting} | {'accuracy' if m.endswith('_accuracy') else 'score'} | "
                     + " | ".join(cells.get(x, "") for x in groups) + " |")
    return "\n".join(lines) + "\n"


def _short(value: float) -> str:
    """1234 -> 1.2k, 3.4e6 -> 3.4M."""
    for factor, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f}{suffix}"
    return f"{value:.0f}"


def heldout_line(panel: dict, budget: float, several_settings: bool) -> str:
    """One panel's verdict line: every algorithm's held-out value at the common budget (mean over
    seeds), and the top two's difference with its SE over the seeds both have and a verdict (with 3
    or more common seeds)."""
    at_budget = panel["at_budget"]
    said = ", ".join(f"{k} {v:.4g}" for k, v in at_budget.items())
    where = f" ({panel['setting']})" if several_settings else ""
    line = f"held-out {panel['metric']}{where} at equal compute ({_short(budget)} forward-equivalents): {said}"
    if len(at_budget) > 1:
        first, second = sorted(at_budget, key=lambda k: -at_budget[k])[:2]
        a, b = panel["per_seed"][first], panel["per_seed"][second]
        diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
        if len(diffs) < 3:   # a standard error from one or two seeds says little: no verdict
            line += (f"; {first} - {second}: {at_budget[first] - at_budget[second]:+.3g} ({len(diffs)} common "
                     "seed(s): no verdict, it takes 3 or more)")
        else:
            se = float(pd.Series(diffs).std(ddof=1) / math.sqrt(len(diffs)))
            mean = sum(diffs) / len(diffs)
            line += f"; {first} - {second}: {mean:+.3g} (SE {se:.2g} over {len(diffs)} seeds): {verdict(mean, se)}"
    return line


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


def claims_markdown(result: dict, metric: str) -> str:
    c = result["claims_config"]
    lines = [f"# Claims on the tiny world (held-out metric: `{metric}`)", ""]
    base = result.get("base_model")
    if base:
        # pretrain.json's `alignment` is its world's truth metric (the judge in the compositional world)
        vae = f", through its VAE {base['vae_ceiling']:.3f}" if base.get("vae_ceiling") is not None else ""
        lines += [f"Base model (shipped / pretrained): {metric} {base['alignment']:.3f}, against chance "
                  f"{base['chance']:.3f} (its images scored under shuffled captions) and the rendering's "
                  f"ceiling {base['ceiling']:.3f}{vae}.", ""]
    lines += ["| claim | measured | threshold | verdict |", "|---|---|---|---|"]
    s = result["spread_falls_with_step"]
    lines.append(f"| measured spread falls with the step | rho(step, reward std) = {s['rho_step_reward_std']:.2f}, "
                 f"rho(step, latent var) = {s['rho_step_latent_variance']:.2f} | <= {s['threshold']:.2f} | {verdict_word(s['held'])} |")
    t = result["reward_std_tracks_entropy"]
    lines.append(f"| reward std tracks the analytic entropy | rho(H, reward std) = {t['rho_entropy_reward_std']:.2f} "
                 f"| >= {t['threshold']:.2f} | {verdict_word(t['held'])} |")
    m = result["merged_steps_raise_spread"]
    if m["held"] is None:
        lines.append(f"| merged steps raise the spread | {m['why']} | | n/a |")
    else:
        lines.append(f"| merged steps raise the spread | reward std higher in {m['share_reward_std_higher']:.0%} of "
                     f"{m['pairs']} pairs (latent var: {m['share_latent_variance_higher']:.0%}), mean ratio "
                     f"{m['mean_reward_std_ratio']:.2f} | >= {m['threshold_share']:.0%} | {verdict_word(m['held'])} |")
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
                         f"<= {f['target']} | {verdict_word(f['held'])} |")
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
                     f"{verdict_word(f['held'])} (on the median over all seeds) |")
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
