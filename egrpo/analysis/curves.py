"""Held-out curves at equal compute: each run's curve (value against forward-equivalents) read at a
point, on a grid, at the common budget B (the smallest final cost of the runs compared: runs stop at
the first iteration that reaches the configured budget, so they overshoot it by different amounts),
and where it first reaches a target. Linear interpolation along each run's curve throughout."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

RUN = ["algorithm", "reward_setting", "seed"]


def value_at(xs, ys, at: float) -> float:
    """A curve's value at x = at by linear interpolation (NaN beyond its ends)."""
    import numpy as np

    return float(np.interp(at, xs, ys, left=np.nan, right=np.nan)) if len(xs) else float("nan")


def on_grid(runs: pd.DataFrame, grid: np.ndarray, column: str = "value") -> np.ndarray:
    """[seeds, len(grid)]: each seed's held-out curve of one algorithm, linearly interpolated at `grid`
    forward-equivalents (held at its last value beyond its end)."""
    return np.array([np.interp(grid, r.sort_values("iteration")["forward_equivalents"], r.sort_values("iteration")[column])
                     for _, r in runs.groupby("seed")])


def common_budget(curves: pd.DataFrame) -> float:
    """B: the smallest final forward-equivalents of all runs in `curves` (long table)."""
    keys = [k for k in RUN if k in curves]
    return float(curves.groupby(keys)["forward_equivalents"].max().min())


def first_crossing(xs, ys, target: float) -> float | None:
    """The smallest x at which the piecewise-linear curve (xs, ys) reaches `target`; None if never."""
    for k, (x, y) in enumerate(zip(xs, ys)):
        if y >= target:
            if k == 0:
                return float(x)
            x0, y0 = xs[k - 1], ys[k - 1]
            return float(x0 + (target - y0) / (y - y0) * (x - x0))
    return None


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


def heldout_panels(table: pd.DataFrame, points: int = 50) -> tuple[float, list[dict]]:
    """What the held-out plot draws, one panel per (metric, reward setting) of the long table of
    runs.heldout_table: per algorithm the mean and min/max over seeds on a grid up to its shortest
    run's end, and the mean over seeds at the common budget B of all runs. Returns (B, panels)."""
    metrics = sorted(c[len("heldout_"):] for c in table.columns if c.startswith("heldout_"))
    budget = common_budget(table)
    settings = list(dict.fromkeys(table["reward_setting"]))
    algorithms = list(dict.fromkeys(table["algorithm"]))
    panels = []
    for metric in metrics:
        for setting in settings:
            column, lines, at_budget, per_seed = f"heldout_{metric}", {}, {}, {}
            for algorithm in algorithms:
                mine = table[(table["algorithm"] == algorithm) & (table["reward_setting"] == setting)]
                mine = mine[mine.groupby("seed")[column].transform(lambda v: v.notna().all())]
                if mine.empty:
                    continue
                end = float(mine.groupby("seed")["forward_equivalents"].max().min())
                grid = np.linspace(0, end, points)
                ys = on_grid(mine, grid, column)
                lines[algorithm] = {"grid": grid, "mean": ys.mean(0), "lo": ys.min(0), "hi": ys.max(0), "runs": len(ys)}
                values = on_grid(mine, np.array([budget]), column)[:, 0]
                at_budget[algorithm] = float(values.mean())
                per_seed[algorithm] = dict(zip(sorted(mine["seed"].unique()), map(float, values)))
            panels.append({"metric": metric, "setting": setting, "lines": lines, "at_budget": at_budget,
                           "per_seed": per_seed})
    return budget, panels


def reward_vs_truth(table: pd.DataFrame, settings: dict[str, dict], truth: str) -> list[dict]:
    """Per reward setting and algorithm: how the held-out value of the reward it trains on and of the
    ground truth `truth` moved from the base (the curve's first point), mean over seeds, against
    forward-equivalents, and both at the common budget. A learned reward that rises while the truth
    does not is the reward hacking the report shows. Only settings whose trained reward was measured."""
    budget = common_budget(table)
    out = []
    for setting, weights in settings.items():
        trained = next((r for r in weights if r != truth and f"heldout_{r}" in table), None)
        if trained is None or f"heldout_{truth}" not in table:
            continue
        rows = table[table["reward_setting"] == setting]
        for algorithm, mine in rows.groupby("algorithm", sort=False):
            end = float(mine.groupby("seed")["forward_equivalents"].max().min())
            grid = np.linspace(0, end, 50)
            moved = {}
            for metric in (trained, truth):
                ys = on_grid(mine, grid, f"heldout_{metric}")
                moved[metric] = (ys - ys[:, :1]).mean(0)
                at = on_grid(mine, np.array([0.0, budget]), f"heldout_{metric}")
                moved[f"{metric}_at_budget"] = float((at[:, 1] - at[:, 0]).mean())
            out.append({"setting": setting, "algorithm": algorithm, "trained": trained, "truth": truth,
                        "grid": grid, **moved})
    return out
