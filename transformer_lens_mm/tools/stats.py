"""Confidence intervals: the one helper every summary of the package uses.

Normal intervals of a mean over independent units (images): ``mean +- z * std / sqrt(n)``.

Example:
    >>> mean, half = mean_ci([1.0, 2.0, 3.0])
    >>> round(mean, 3), round(half, 3)
    (2.0, 1.132)
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from transformer_lens_mm.errors import ArgumentError

__all__ = ["ci_half_width", "mean_ci"]


def ci_half_width(std: Any, n: Any, ci: float = 0.95) -> Any:
    """Half-width of the normal ``ci`` interval of a mean: ``z * std / sqrt(n)``.

    Works elementwise on numbers, numpy arrays and pandas Series (``std`` is the sample
    standard deviation, ``ddof=1``).
    """
    if not 0.0 < ci < 1.0:
        raise ArgumentError(f"ci must be in (0, 1), got {ci}")
    return NormalDist().inv_cdf(0.5 + ci / 2) * std / np.sqrt(n)


def mean_ci(values: Sequence[float], ci: float = 0.95) -> tuple[float, float]:
    """Mean and ``ci`` half-width of ``values`` (``nan`` half-width for fewer than 2 values)."""
    arr = np.asarray(values, dtype=float)
    if len(arr) == 0:
        return float("nan"), float("nan")
    if len(arr) < 2:
        return float(arr.mean()), float("nan")
    return float(arr.mean()), float(ci_half_width(arr.std(ddof=1), len(arr), ci))
