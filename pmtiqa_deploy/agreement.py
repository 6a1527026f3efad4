"""Rank and linear agreement between two score lists: SRCC, PLCC, KRCC (scipy) and the
largest absolute difference. Used for validation metrics, parity checks and benchmarks."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Agreement:
    srcc: float
    plcc: float
    krcc: float
    max_abs_diff: float
    count: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def agreement(predicted, target) -> Agreement:
    """Correlations of `predicted` with `target`; NaN where they are undefined
    (fewer than two values, or a constant list)."""
    from scipy import stats

    a = np.asarray(predicted, dtype=np.float64).ravel()
    b = np.asarray(target, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"score lists differ in length: {a.size} vs {b.size}")
    if a.size == 0:
        return Agreement(math.nan, math.nan, math.nan, math.nan, 0)
    diff = float(np.max(np.abs(a - b)))
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        if np.array_equal(a, b):
            return Agreement(1.0, 1.0, 1.0, diff, int(a.size))
        return Agreement(math.nan, math.nan, math.nan, diff, int(a.size))
    return Agreement(
        srcc=float(stats.spearmanr(a, b).statistic),
        plcc=float(stats.pearsonr(a, b).statistic),
        krcc=float(stats.kendalltau(a, b).statistic),
        max_abs_diff=diff,
        count=int(a.size),
    )
