"""Tests for ibtpo.stats: t-intervals, paired differences and bootstrap, by hand."""

import math

import pytest

from ibtpo.stats import bootstrap_ci, fmt_ci, mean_ci, paired_ci, t_quantile


def test_t_quantiles():
    assert t_quantile(1) == 12.706 and t_quantile(4) == 2.776 and t_quantile(30) == 2.042
    assert t_quantile(60) == pytest.approx(2.000, abs=1e-3)   # tables: 2.000
    assert t_quantile(120) == pytest.approx(1.980, abs=1e-3)  # tables: 1.980
    with pytest.raises(ValueError, match="df"):
        t_quantile(0)


def test_mean_ci_by_hand():
    # xs = 1, 2, 3, 4, 5: mean 3, sd sqrt(2.5) = 1.5811, se 0.7071, t_4 2.776 -> 1.9630
    mean, half = mean_ci([1, 2, 3, 4, 5])
    assert mean == 3 and half == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5))
    assert math.isnan(mean_ci([7.0])[1]) and mean_ci([7.0])[0] == 7.0


def test_paired_ci_uses_differences():
    # differences 0.02, 0.04, 0.03: mean 0.03, sd 0.01, se 0.00577, t_2 4.303 -> 0.02484
    mean, half = paired_ci([0.52, 0.54, 0.53], [0.50, 0.50, 0.50])
    assert mean == pytest.approx(0.03) and half == pytest.approx(4.303 * 0.01 / math.sqrt(3))
    with pytest.raises(ValueError, match="paired"):
        paired_ci([1, 2], [1])


def test_bootstrap_ci_brackets_the_statistic_and_is_seeded():
    units = list(range(100))
    value, lo, hi = bootstrap_ci(units, lambda u: sum(u) / len(u), n_boot=500, seed=1)
    assert value == 49.5 and lo < 49.5 < hi
    # se of the mean of 0..99 is 2.9: the 95% interval spans roughly +-5.7
    assert 3.5 < hi - value < 8 and 3.5 < value - lo < 8
    assert bootstrap_ci(units, lambda u: sum(u) / len(u), n_boot=500, seed=1) == (value, lo, hi)


def test_fmt_ci():
    assert fmt_ci(0.5123, 0.0211) == "0.512 ± 0.021"
    assert fmt_ci(0.5, float("nan")) == "0.500"
    assert fmt_ci(0.031, 0.02, digits=1, scale=100) == "3.1 ± 2.0"
