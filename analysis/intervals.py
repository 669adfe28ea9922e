"""Confidence intervals across independent repeats (seeds) of a training run (section 6 RQ3,
Table 5 and appendix G Tables 11-14, which the paper reports as single runs).

Pure functions: numbers in, numbers out.

- ``t_interval``: the mean of n repeats and its two-sided Student-t interval,
  mean -+ t_{(1+level)/2, n-1} s / sqrt(n), s the unbiased standard deviation.

Departures and choices (the paper reports no intervals):

1. Seeds are few (2-5), so the interval is Student's t, not a bootstrap (a percentile
   bootstrap of 3 values cannot reach beyond their range). It assumes roughly normal
   seed-to-seed variation; with 2 seeds t_{0.975, 1} = 12.7 makes it honestly wide.
2. Fewer than 2 finite values: the mean of those there are (NaN for none) and a NaN interval;
   NaN values are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = ["Interval", "t_interval"]


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` repeats and its confidence interval [``low``, ``high``]."""

    mean: float
    """Mean of the repeats (NaN left out)."""
    low: float
    """Lower end of the interval (NaN with fewer than two repeats)."""
    high: float
    """Upper end of the interval (NaN with fewer than two repeats)."""
    n: int
    """Number of repeats that are not NaN."""

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def t_interval(values: ArrayLike, *, level: float = 0.95) -> Interval:
    """Mean of ``values`` (1-D; NaN left out) and its two-sided Student-t interval at
    ``level`` in (0, 1)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(stats.t.ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)
