"""Confidence intervals and paired tests for accuracies (numpy / scipy)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def wilson_ci(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved near 0 and 1, unlike the normal one)."""
    if n == 0:
        return (0.0, 0.0)
    z = stats.norm.ppf(0.5 + level / 2)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict:
    """Exact McNemar test on paired correctness vectors (two-sided binomial test on the discordant pairs)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    b_only, a_only = int(np.sum(~a & b)), int(np.sum(a & ~b))
    n = a_only + b_only
    p = 1.0 if n == 0 else float(stats.binomtest(b_only, n, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p_value": p}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, reps: int = 10000, seed: int = 0, level: float = 0.95) -> dict:
    """Bootstrap CI of mean(b) − mean(a) over items resampled with replacement (pairs kept together)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = b - a
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(reps, len(diff)))
    means = diff[idx].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"diff": float(diff.mean()), "ci95": [float(lo), float(hi)], "reps": reps, "seed": seed}
