"""Learning-rate schedules as shapes in time: what the growth law integrates (torch-free).

A schedule multiplies the peak rate η by `multiplier(schedule, t)` at epoch t of a T-epoch run.
While the network is ordered its order parameter grows with the integral of the rate (§7 of
science.md):
y(T) ≈ y_int + A(η)·∫₀ᵀ m(t)^a dt for a growth law A ∝ η^a, so a scheduled run reaches the same
edge as a constant one whose rate is the schedule's mean. `edgetune.optim` builds PyTorch
schedulers with exactly these shapes, stepped once per optimizer step.
"""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["constant", "cosine", "warmup-cosine", "linear-decay"]
SCHEDULES: tuple[Schedule, ...] = ("constant", "cosine", "warmup-cosine", "linear-decay")
# Points per epoch of the numerical integrals: the shapes are smooth, so this is exact to ~1e-6.
POINTS_PER_EPOCH = 200


def multiplier(schedule: Schedule, t: float, epochs: float, warmup_epochs: float = 0.0) -> float:
    """The rate at epoch t as a fraction of the peak: cosine and linear decay run from 1 to 0 over
    the run; warmup-cosine rises linearly to 1 over the warm-up, then follows a cosine to 0."""
    if schedule == "constant":
        return 1.0
    t = min(max(t, 0.0), epochs)
    if schedule == "linear-decay":
        return 1.0 - t / epochs
    start = warmup_epochs if schedule == "warmup-cosine" else 0.0
    if t < start:
        return t / start
    span = epochs - start
    return 0.5 * (1.0 + math.cos(math.pi * (t - start) / span)) if span > 0 else 1.0


def integral(
    schedule: Schedule,
    t: float,
    epochs: float,
    warmup_epochs: float = 0.0,
    exponent: float = 1.0,
) -> float:
    """∫₀ᵗ m(s)^exponent ds in epochs (the trapezoid rule on POINTS_PER_EPOCH points per epoch)."""
    if schedule == "constant" or t <= 0:
        return max(t, 0.0)
    n = max(2, math.ceil(POINTS_PER_EPOCH * t))
    h = t / n
    values = [multiplier(schedule, i * h, epochs, warmup_epochs) ** exponent for i in range(n + 1)]
    return h * (sum(values) - 0.5 * (values[0] + values[-1]))


def mean_multiplier(
    schedule: Schedule, epochs: float, warmup_epochs: float = 0.0, exponent: float = 1.0
) -> float:
    """The schedule's mean of m^exponent over the run: 1 for constant, 1/2 for the decays to 0
    at exponent 1. A scheduled run's peak rate is the constant answer over this (exponent 1)."""
    return integral(schedule, epochs, epochs, warmup_epochs, exponent) / epochs
