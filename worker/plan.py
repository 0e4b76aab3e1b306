"""The probe plan: which short runs measure the growth law, the exponents and the decay rate.

The plan places a few probes at effective learning rates that bracket the one the prior expects
to meet the edge within the budget (so the recommendation interpolates), adds twins that vary the
knobs the user left free (momentum, batch size: their ratios measure the exponents) and one twin
with weight decay (its bend measures D). It is deterministic in (spec, dataset size): a job that
is re-claimed plans the same probes, under the same keys, and resumes from the stored ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from app.schemas import MLPSpec, RecommendationSpec
from worker.data import Dataset
from worker.law import EDGE, PRIOR_K, SATURATION_GAP, effective_rate, knobs, max_step
from worker.probe import ProbeConfig

# Probe learning rates relative to the target: they bracket it, so the recommendation
# interpolates. Far above it the growth law bends upward (k rises with η/((1−α)B): 10.5 at 3e-3,
# 11.8 at 6e-3, 15+ at 1.25e-2 on Fashion-MNIST, benchmarks/results/reproduce_paper_cpu.json),
# and a wider bracket would bias k upward.
ETA_FACTORS = (0.5, 1.0, 2.0)
MAX_PROBE_EPOCHS = 4.0

Purpose = Literal["growth", "decay"]
Knobs = tuple[float, float, int]  # (η, α, B)


@dataclass(frozen=True)
class PlannedProbe:
    key: str  # stable within a job: stored probes are matched by key on resume
    group: int  # probes of one group share a batch size and train as one population
    config: ProbeConfig
    purpose: Purpose
    epochs: float


def _initial_order(spec: RecommendationSpec) -> float:
    """The prior y0 used to place the probes (the measured y0 is used for the recommendation)."""
    model = spec.model
    if isinstance(model, MLPSpec) and model.init.scheme == "edge":
        return model.init.J**2
    return 0.25


def target_growth(y0: float, epochs: float, decay_free: bool, fixed_decay: float | None) -> float:
    """The growth rate A that brings y to the edge by the end of the budget.

    Without decay (the default when decay is free, see `law.choose_config`), y = y0 + A·t reaches
    the edge exactly at the end (science.md §4 step 4: "or without decay stop at t_edge"). With a
    user-fixed decay saturating at the edge (D = A), y(t) = 1 − (1 − y0)·e^(−A·t) reaches within
    SATURATION_GAP of the edge at the end.
    """
    gap = max(EDGE - y0, 1e-3)
    if fixed_decay is not None and fixed_decay > 0:
        return math.log(gap / SATURATION_GAP) / epochs
    return gap / epochs


def _growth_knobs(spec: RecommendationSpec, batch0: int) -> list[Knobs]:
    """Growth probes at batch0: η around the target, plus the twins that measure α's exponent."""
    opt = spec.optimizer
    alpha0, _ = knobs(spec)
    # A net that starts at or past the edge still gets probed (to measure and report it).
    y0 = min(_initial_order(spec), 0.5)
    a_target = target_growth(y0, spec.budget.epochs, opt.weight_decay is None, opt.weight_decay)
    eff_target = a_target / PRIOR_K  # η/((1−α)B) the prior expects
    growth: list[Knobs] = []
    if opt.learning_rate is None:
        # Keep the whole grid inside the stable range: when the target is near the bound, the
        # grid slides down so that its top probe sits at the bound.
        base = min(eff_target, max_step(batch0) / batch0 / max(ETA_FACTORS))
        for f in ETA_FACTORS:
            growth.append((base * f * (1 - alpha0) * batch0, alpha0, batch0))
    else:
        growth.append((opt.learning_rate, alpha0, batch0))
    eta_mid = growth[min(1, len(growth) - 1)][0]
    if opt.momentum is None:
        # Same η at α = 0.5: the ratio of growth rates measures the exponent of 1/(1−α).
        growth.append((eta_mid, 0.5, batch0))
    if opt.learning_rate is not None and opt.momentum is None:
        growth.append((opt.learning_rate, 0.0, batch0))
    # Drop near-duplicates (the stability cap can fold the top factors onto one η).
    unique: list[Knobs] = []
    for g in growth:
        if not any(abs(g[0] / u[0] - 1) < 0.05 and g[1:] == u[1:] for u in unique):
            unique.append(g)
    return unique


def _big_batch_knobs(
    spec: RecommendationSpec, dataset: Dataset, growth: list[Knobs], batch0: int
) -> list[Knobs]:
    """Growth probes at 4×B, which measure the exponent of 1/B and test the collapse in η/B."""
    opt = spec.optimizer
    alpha0, _ = knobs(spec)
    eta_mid = growth[min(1, len(growth) - 1)][0]
    big_batch: list[Knobs] = []
    batch1 = 4 * batch0
    if opt.batch_size is None and dataset.train_size // batch1 >= 50:
        # Same η at 4×B measures the exponent of 1/B; 4×η at 4×B tests the collapse in η/B.
        big_batch.append((eta_mid, alpha0, batch1))
        if opt.learning_rate is None:
            eta_big = min(eta_mid * 4, max_step(batch1) * (1 - alpha0))
            big_batch.append((eta_big, alpha0, batch1))
    return big_batch


def _decay_knobs(
    spec: RecommendationSpec, dataset: Dataset, growth: list[Knobs]
) -> list[tuple[float, float, int, float]]:
    """The decay probe (η, α, B, wd), unless the user fixed the decay at 0."""
    opt = spec.optimizer
    if not (opt.weight_decay is None or opt.weight_decay > 0):
        return []
    # Twin of the fastest growth probe (all lie inside the stable range), with decay: the bend of
    # y measures D. Without a user value, pick a decay whose equilibrium (prior) sits at y ≈ 0.5,
    # so the bend is visible within the probe.
    eta_d, alpha_d, batch_d = max(growth, key=lambda g: effective_rate(*g))
    wd = opt.weight_decay if opt.weight_decay else PRIOR_K / (2 * dataset.train_size * 0.5)
    return [(eta_d, alpha_d, batch_d, wd)]


def plan_probes(spec: RecommendationSpec, dataset: Dataset) -> list[PlannedProbe]:
    """A few short probes, run as populations, that measure the growth law and the decay rate."""
    _, batch0 = knobs(spec)
    batch0 = min(batch0, dataset.train_size)
    growth = _growth_knobs(spec, batch0)
    big_batch = _big_batch_knobs(spec, dataset, growth, batch0)
    decay = _decay_knobs(spec, dataset, growth)

    n = len(growth) + len(big_batch) + len(decay)
    probe_epochs = min(MAX_PROBE_EPOCHS, spec.budget.epochs * spec.budget.probe_fraction / n)

    def steps(batch: int) -> int:
        # floor: the probes never spend more than budget.probe_fraction allows.
        return max(1, math.floor(probe_epochs * dataset.train_size / batch))

    rows: list[tuple[int, float, float, int, float, Purpose]] = [
        *((0, eta, alpha, batch, 0.0, "growth") for eta, alpha, batch in growth),
        *((0, eta, alpha, batch, wd, "decay") for eta, alpha, batch, wd in decay),
        *((1, eta, alpha, batch, 0.0, "growth") for eta, alpha, batch in big_batch),
    ]
    return [
        PlannedProbe(
            f"p{i:02d}",
            group,
            ProbeConfig(eta, alpha, wd, batch, spec.seed * 1000 + i, steps(batch)),
            purpose,
            probe_epochs,
        )
        for i, (group, eta, alpha, batch, wd, purpose) in enumerate(rows)
    ]
