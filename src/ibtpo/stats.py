"""Uncertainty of reported figures: t-intervals over seeds, paired differences, bootstrap. Pure.

- `mean_ci(xs)`: mean and the half-width of its two-sided 95% Student-t interval over independent
  runs (seeds); NaN half-width for fewer than two values.
- `paired_ci(a, b)`: the same for the per-seed differences a_i - b_i (runs paired by seed: same
  warm-up, same training-prompt stream, same evaluation problems), the interval that decides
  whether one method beats another.
- `bootstrap_ci(units, statistic)`: percentile interval of any statistic of a list of independent
  units (e.g. prompts), resampled with replacement; used for ratios such as trajectories per
  1k generated tokens, which are not means of per-prompt values.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence

# two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060,
        2.056, 2.052, 2.048, 2.045, 2.042)
Z975 = 1.959964


def t_quantile(df: int) -> float:
    """t_{0.975, df}: the table up to 30, then the Cornish-Fisher expansion (error < 1e-3)."""
    if df < 1:
        raise ValueError(f"df: expected an integer >= 1, got {df!r}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def mean_ci(xs: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); the half-width is NaN for n < 2."""
    xs = [float(x) for x in xs]
    if not xs:
        return float("nan"), float("nan")
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    return mean, t_quantile(len(xs) - 1) * sd / math.sqrt(len(xs))


def paired_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """mean_ci of the paired differences a_i - b_i (same length: one pair per seed)."""
    if len(a) != len(b):
        raise ValueError(f"paired_ci: expected paired values, got {len(a)} and {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b)])


def bootstrap_ci(units: Sequence, statistic: Callable[[Sequence], float], n_boot: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(statistic of all units, 2.5th and 97.5th percentiles over `n_boot` resamples)."""
    if not units:
        raise ValueError("bootstrap_ci: expected at least one unit")
    rng = random.Random(seed)
    stats = sorted(statistic(rng.choices(units, k=len(units))) for _ in range(n_boot))
    lo, hi = stats[int(0.025 * (n_boot - 1))], stats[int(math.ceil(0.975 * (n_boot - 1)))]
    return statistic(units), lo, hi


def fmt_ci(mean: float, half: float, digits: int = 3, scale: float = 1.0) -> str:
    """'0.512 ± 0.021' (or just the mean when the half-width is NaN)."""
    if math.isnan(mean):
        return "n/a"
    if math.isnan(half):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {half * scale:.{digits}f}"
