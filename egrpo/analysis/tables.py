"""The report's table: mean and std over seeds per algorithm and reward setting, the evaluation's
standard error, the change against the baseline, the cost; and the notes that go with it."""
from __future__ import annotations

import pandas as pd


def summary_table(per_policy: pd.DataFrame, metrics: list[str], baseline: str = "dancegrpo") -> pd.DataFrame:
    """Rows per algorithm x reward setting (base first); columns <metric>_mean/_std over seeds,
    <metric>_vs_<baseline>_pct (change against the baseline row of the same reward setting),
    cost (NFE, forward-equivalents, wall-clock, GPU-hours) and the number of seeds."""
    cost = [c for c in ("nfe_total", "forward_equivalents", "wall_s", "gpu_hours") if c in per_policy]
    per_policy = per_policy.copy()
    per_policy["_order"] = (per_policy["algorithm"] != "base").astype(int)
    per_policy = per_policy.sort_values("_order", kind="stable")
    grouped = per_policy.groupby(["algorithm", "reward_setting"], sort=False)
    table = grouped[metrics].agg(["mean", "std"])
    table.columns = [f"{m}_{stat}" for m, stat in table.columns]
    for c in cost:
        table[c] = grouped[c].mean()
    for m in metrics:   # the evaluation's own standard error of one policy's mean, averaged over seeds
        # (NaN where unknown: one prompt, or summaries from before it was recorded; MLflow then has no value)
        table[f"{m}_eval_se"] = grouped[f"{m}_se"].mean() if f"{m}_se" in per_policy else float("nan")
    table["seeds"] = grouped["policy"].count()
    if "health" in per_policy:   # per row: healthy, or how many of its seeds a rule flagged (egrpo/health.py)
        table["health"] = grouped["health"].agg(lambda v: "" if v.isna().all() else
                                                "healthy" if (v == "healthy").all() else
                                                f"{int((v == 'flagged').sum())} of {len(v)} flagged"
                                                if (v == "flagged").any() else "not judged")
    table = table.reset_index()
    for m in metrics:
        reference = table[table["algorithm"] == baseline].set_index("reward_setting")[f"{m}_mean"]
        ref = table["reward_setting"].map(reference)
        table[f"{m}_vs_{baseline}_pct"] = 100 * (table[f"{m}_mean"] - ref) / ref.abs()
    return table


def requeue_note(per_policy: pd.DataFrame) -> str:
    """One line naming the runs that went on over several jobs (stopped before a time limit and
    resumed; egrpo/runtime/timelimit.py), empty when none did."""
    if "time_limit_stops" not in per_policy:
        return ""
    stopped = per_policy[per_policy["time_limit_stops"].fillna(0) > 0]
    if stopped.empty:
        return ""
    runs = ", ".join(f"{p} {int(n)}" for p, n in zip(stopped["policy"], stopped["time_limit_stops"]))
    return (f"Requeued at a time limit (stops, each resumed from its saved state): {runs}; "
            f"{int(stopped['time_limit_stops'].sum())} requeue(s) in all.\n")


def compute_caveats(table: pd.DataFrame, baseline: str = "dancegrpo", tolerance: float = 0.1) -> list[str]:
    """One line per reward setting whose rows used different compute (forward-equivalents)."""
    if "forward_equivalents" not in table:
        return []
    out = []
    for setting, rows in table[table["algorithm"] != "base"].groupby("reward_setting", sort=False):
        ref = rows.loc[rows["algorithm"] == baseline, "forward_equivalents"]
        if ref.empty or not ref.iloc[0] > 0:
            continue
        ratios = {a: fe / ref.iloc[0] for a, fe in zip(rows["algorithm"], rows["forward_equivalents"]) if a != baseline}
        unequal = {a: r for a, r in ratios.items() if abs(r - 1) > tolerance}
        if unequal:
            said = ", ".join(f"{a} {r:.2f}x" for a, r in unequal.items())
            out.append(f"Not equal compute ({setting}): forward-equivalents relative to {baseline}: {said}. "
                       f"Compare at an equal budget with `train.max_forward_equivalents` (the claims stage does).")
    return out


def health_note(per_policy: pd.DataFrame) -> str:
    """table.md's lines on run health: every flagged run with the rule's line, or that none was."""
    if "health_flags" not in per_policy:
        return ""
    flagged = per_policy[per_policy["health_flags"].fillna("") != ""]
    lines = ["", "## Run health (egrpo/health.py; docs/health.md)", ""]
    if flagged.empty:
        judged = per_policy["health"].isin(["healthy", "flagged"]).sum() if "health" in per_policy else 0
        return "\n".join(lines + [f"No rule flagged any of the {judged} runs."]) + "\n"
    lines += [f"- {p}: {text}" for p, text in zip(flagged["policy"], flagged["health_flags"])]
    return "\n".join(lines) + "\n"
