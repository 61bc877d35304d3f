"""Paired comparisons of policies. Every policy is evaluated on the same prompts from the same noise
(egrpo/sampling.py: one seed per prompt and image), so the difference of two policies is measured
image by image and its standard error is far below the per-row SEs of the table.

For two rows A and B of one reward setting (each a set of seeds):
    d_p = mean over the seeds both have and the images of prompt p of (score_A - score_B)
    difference = mean_p d_p;  paired SE = std_p(d_p) / sqrt(#prompts)          (evaluation noise)
    with 2 or more seeds also seed SE = std_s(difference_s) / sqrt(#seeds)     (training noise)
The verdict uses the larger of the two: "better" if difference > 2 SE, "worse" if < -2 SE, else
"within noise"; rows whose forward-equivalents differ by more than `tolerance` are "not at equal
compute" and get no verdict.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

KEYS = ["prompt_index", "image_index"]


def verdict(difference: float, se: float) -> str:
    if not math.isfinite(difference):
        return "n/a"
    if not math.isfinite(se):
        return "no verdict (one prompt and one seed: no standard error)"
    if se == 0 and difference == 0:
        return "within noise"
    if difference > 2 * se:
        return "better"
    if difference < -2 * se:
        return "worse"
    return "within noise"


def compare(scores: pd.DataFrame, metric: str, a: str, b: str, setting: str) -> dict:
    """A against B (algorithms) in `setting` on `metric`, from the long table of runs.eval_scores."""
    mine = scores[scores["reward_setting"] == setting]
    left = mine[mine["algorithm"] == a][["seed", *KEYS, metric]]
    right = (scores if b == "base" else mine)[lambda df: df["algorithm"] == b][["seed", *KEYS, metric]]
    if b == "base":   # the base model has one evaluation: every seed of A is paired with it
        right = right.drop(columns="seed")
        both = left.merge(right, on=KEYS, suffixes=("_a", "_b"))
    else:
        both = left.merge(right, on=["seed", *KEYS], suffixes=("_a", "_b"))
    if both.empty:
        return {"difference": math.nan, "paired_se": math.nan, "seed_se": math.nan, "prompts": 0, "seeds": 0,
                "verdict": "n/a"}
    both["d"] = both[f"{metric}_a"] - both[f"{metric}_b"]
    per_prompt = both.groupby("prompt_index")["d"].mean()
    per_seed = both.groupby("seed")["d"].mean()
    difference = float(per_prompt.mean())
    paired_se = float(per_prompt.std(ddof=1) / math.sqrt(len(per_prompt))) if len(per_prompt) > 1 else math.nan
    seed_se = float(per_seed.std(ddof=1) / math.sqrt(len(per_seed))) if len(per_seed) > 1 else math.nan
    se = float(np.nanmax([paired_se, seed_se])) if not (math.isnan(paired_se) and math.isnan(seed_se)) else math.nan
    return {"difference": difference, "paired_se": paired_se, "seed_se": seed_se, "prompts": len(per_prompt),
            "seeds": len(per_seed), "verdict": verdict(difference, se)}


def comparisons(scores: pd.DataFrame, table: pd.DataFrame, metrics: list[str], tolerance: float = 0.1) -> pd.DataFrame:
    """Every ordered pair of trained rows of a reward setting, and every trained row against the base:
    difference, SEs, whether their compute is equal (forward-equivalents within `tolerance`), verdict."""
    rows = []
    fe = {(r["algorithm"], r["reward_setting"]): r.get("forward_equivalents") for _, r in table.iterrows()}
    for setting in dict.fromkeys(table.loc[table["algorithm"] != "base", "reward_setting"]):
        trained = [a for a in table.loc[table["reward_setting"] == setting, "algorithm"] if a != "base"]
        pairs = [(a, b) for a in trained for b in trained if a != b] + [(a, "base") for a in trained]
        for metric in metrics:
            for a, b in pairs:
                row = {"reward_setting": setting, "metric": metric, "algorithm": a, "against": b,
                       **compare(scores, metric, a, b, setting)}
                if b == "base":
                    row["equal_compute"], row["compute_ratio"] = True, math.nan
                else:
                    ratio = fe[(a, setting)] / fe[(b, setting)] if fe.get((b, setting)) else math.nan
                    row["compute_ratio"] = ratio
                    row["equal_compute"] = bool(math.isfinite(ratio) and abs(ratio - 1) <= tolerance)
                    if not row["equal_compute"]:
                        row["verdict"] = "not at equal compute"
                rows.append(row)
    return pd.DataFrame(rows)


def best_at_equal_compute(cmp: pd.DataFrame) -> set[tuple[str, str, str]]:
    """(setting, metric, algorithm) of rows better than every other trained row of their setting,
    each comparison at equal compute: the only cells the table sets in bold."""
    out = set()
    if cmp.empty:
        return out
    trained = cmp[cmp["against"] != "base"]
    for (setting, metric, algorithm), g in trained.groupby(["reward_setting", "metric", "algorithm"]):
        if len(g) and (g["verdict"] == "better").all():
            out.add((setting, metric, algorithm))
    return out
