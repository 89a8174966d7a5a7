"""Reading training curves: trailing moving averages and the first step at which a curve
reaches a threshold (the "steps to X% accuracy" of the batch-norm paper, the "time to
overfit" of the memorisation paper)."""

from __future__ import annotations

import math

import numpy as np


def moving_average(values, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start): entry ``i`` is the
    mean of ``values[max(0, i - window + 1): i + 1]``."""
    if window < 1:
        raise ValueError(f"`window` must be >= 1. Received: {window}")
    values = np.asarray(values, dtype=np.float64)
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def steps_to_threshold(steps, values, threshold: float):
    """The first entry of ``steps`` whose value is >= ``threshold`` (NaN never is), or None
    when the curve never gets there."""
    steps, values = np.asarray(steps), np.asarray(values, dtype=np.float64)
    if steps.shape != values.shape or steps.ndim != 1:
        raise ValueError(f"`steps` and `values` must be vectors of one length. "
                         f"Received: shapes {steps.shape} and {values.shape}")
    reached = np.flatnonzero(values >= threshold)  # NaN compares False
    return None if len(reached) == 0 else steps[reached[0]].item()


def first_nonfinite(values):
    """Index of the first NaN or infinite value (a diverged run), or None."""
    for index, value in enumerate(values):
        if not math.isfinite(float(value)):
            return index
    return None
