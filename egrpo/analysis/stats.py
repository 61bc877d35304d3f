"""Statistics of the comparisons: rank correlation, a percentile bootstrap interval, and the paired
difference over seeds with its verdict."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


def spearman(a, b) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); nan if either is constant."""
    ra, rb = pd.Series(list(a)).rank(), pd.Series(list(b)).rank()
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


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


def paired_verdict(diffs: list[float], enough: bool) -> dict:
    """Mean paired difference over seeds, its standard error (sample std, n - 1, over sqrt n) and the
    verdict: held if the mean > 2 SE, did not hold if < -2 SE, else (or with too few seeds) inconclusive."""
    mean_diff = float(np.mean(diffs)) if diffs else math.nan
    se = float(np.std(diffs, ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else math.nan
    if not enough or not math.isfinite(se):
        held, verdict = None, "inconclusive"
    elif mean_diff > 2 * se:
        held, verdict = True, "held"
    elif mean_diff < -2 * se:
        held, verdict = False, "did not hold"
    else:
        held, verdict = None, "inconclusive"
    return {"mean_difference": mean_diff, "standard_error": se, "held": held, "verdict": verdict}
