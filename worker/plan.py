"""The probe plan: a few short runs at the configuration to be recommended, clocked in τ.

The recommendation keeps α and B at the user's values or the stated defaults (`law.knobs`: α 0.9,
B 32, each measured better than the alternatives at equal η/((1−α)B), science.md §3), so the probes
run there and vary only η: two growth probes bracket the rate the prior expects to meet the edge
within the budget (so the recommendation interpolates, and their ratio tests A ∝ η directly).
Each probe gets the same gradient-flow time τ = epoch·η/((1−α)B) (science.md §7): the transient
settles at a fixed τ, not a fixed epoch, so a probe at half the rate runs twice the epochs. At a
fixed probe fraction that τ does not depend on the budget (the target rate scales as 1/epochs).
Twins of other knobs run only when the answer uses them: an α = 0 twin when η is fixed and α
free, a 4×B twin when η is fixed and B free, a decay twin when the user fixed a decay > 0 (its
equilibrium needs D). The plan is deterministic in (spec, dataset size): a job that is re-claimed
plans the same probes, under the same keys, and resumes from the stored ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from app.schemas import MLPSpec, RecommendationSpec
from edgetune.nets import first_probe_seed
from edgetune.schedules import mean_multiplier
from worker.data import Dataset
from worker.law import (
    EDGE,
    SATURATION_GAP,
    effective_rate,
    knobs,
    max_step,
    momentum_free,
    prior_rate,
    run_schedule,
)
from worker.probe import ProbeConfig

# Probe learning rates relative to the prior's target: a 4× bracket around it, so the answer
# interpolates when the measured k is within half to twice the prior's (10.7–12.8 on
# Fashion-MNIST, ~20 on digits, 24–31 for the J² of a 784-512-512 ReLU net). Far above the
# target the growth law bends upward (k rises with η/((1−α)B): 10.5 at 3e-3, 11.8 at 6e-3, 15+ at
# 1.25e-2 on Fashion-MNIST, benchmarks/results/reproduce_paper_cpu.json); the fitted exponent
# interpolates through that. Two probes, not three: at a 0.2 probe fraction a third would cut
# every probe's τ well below twice the transient's.
ETA_FACTORS = (0.5, 2.0)
# No probe runs longer than this (long budgets: the τ needed is reached well within it).
MAX_PROBE_EPOCHS = 8.0

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


def _growth_knobs(spec: RecommendationSpec, batch0: int, train_size: int) -> list[Knobs]:
    """Growth probes at batch0: η around the target (or the user's η and, with α free, an α = 0
    twin)."""
    opt = spec.optimizer
    alpha0, _ = knobs(spec)
    # A net that starts at or past the edge still gets probed (to measure and report it).
    y0 = min(_initial_order(spec), 0.5)
    a_target = target_growth(y0, spec.budget.epochs, opt.weight_decay is None, opt.weight_decay)
    # Under a schedule the probes bracket its peak: the constant answer over the mean multiplier.
    schedule, warmup = run_schedule(spec)
    mean = mean_multiplier(schedule, spec.budget.epochs, warmup)
    # The peak η/((1−α)B) the prior expects.
    eff_target = prior_rate(spec, a_target, batch0, train_size) / mean
    growth: list[Knobs] = []
    if opt.learning_rate is None:
        # Keep the whole grid inside the stable range: when the target is near the bound, the
        # grid slides down so that its top probe sits at the bound.
        top = max_step(batch0, mean, opt.type)
        base = min(eff_target, top / batch0 / max(ETA_FACTORS))
        for f in ETA_FACTORS:
            growth.append((base * f * (1 - alpha0) * batch0, alpha0, batch0))
    else:
        growth.append((opt.learning_rate, alpha0, batch0))
    if opt.learning_rate is not None and momentum_free(spec):
        # The answer solves for α: the α = 0 twin measures how growth rises with 1/(1−α).
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
    """With η fixed and B free the answer solves for B: a twin at 4×B measures the exponent of
    1/B. With η free, B stays at the stated default and no batch twin runs."""
    opt = spec.optimizer
    alpha0, _ = knobs(spec)
    batch1 = 4 * batch0
    free_batch = opt.batch_size is None and opt.learning_rate is not None
    if free_batch and dataset.train_size // batch1 >= 50:
        return [(growth[0][0], alpha0, batch1)]
    return []


def _decay_knobs(
    spec: RecommendationSpec, dataset: Dataset, growth: list[Knobs]
) -> list[tuple[float, float, int, float]]:
    """The decay probe (η, α, B, wd) when the user fixed a decay > 0: the recommendation then
    needs its equilibrium. A free decay is recommended as 0 (edge at the end of the budget,
    benchmarks/results/decay_strategy_cpu.json), so no probe measures it."""
    opt = spec.optimizer
    if not opt.weight_decay:
        return []
    # Twin of the fastest growth probe (all lie inside the stable range), with decay: the bend of
    # y measures D.
    eta_d, alpha_d, batch_d = max(growth, key=lambda g: effective_rate(*g))
    return [(eta_d, alpha_d, batch_d, opt.weight_decay)]


def _equal_tau_epochs(spec: RecommendationSpec, rates: list[float]) -> list[float]:
    """Epochs per probe so that each reaches the same τ = epoch·rate and all together see
    budget.probe_fraction of one full run's samples (capped at MAX_PROBE_EPOCHS each)."""
    total = spec.budget.epochs * spec.budget.probe_fraction
    tau = total / sum(1 / r for r in rates)
    return [min(MAX_PROBE_EPOCHS, tau / r) for r in rates]


def best_probe_answers(spec: RecommendationSpec) -> bool:
    """AdamW with a free learning rate: its growth law is measured, but no criterion says where
    its run should end (docs/science.md §8), so the answer is the better probe."""
    return spec.optimizer.type == "adamw" and spec.optimizer.learning_rate is None


def plan_probes(spec: RecommendationSpec, dataset: Dataset) -> list[PlannedProbe]:
    """A few short probes, run as populations, that measure the growth law (and the decay rate
    of a user-fixed decay)."""
    _, batch0 = knobs(spec)
    batch0 = min(batch0, dataset.train_size)
    growth = _growth_knobs(spec, batch0, dataset.train_size)
    big_batch = _big_batch_knobs(spec, dataset, growth, batch0)
    decay = _decay_knobs(spec, dataset, growth)
    growth_decay = 0.0
    if best_probe_answers(spec):
        # The answer is the better probe (no criterion places an AdamW run): the probes run at
        # the decay the user fixed, and no decay twin measures an equilibrium nothing uses.
        growth_decay, decay = spec.optimizer.weight_decay or 0.0, []

    rows: list[tuple[int, float, float, int, float, Purpose]] = [
        *((0, eta, alpha, batch, growth_decay, "growth") for eta, alpha, batch in growth),
        *((0, eta, alpha, batch, wd, "decay") for eta, alpha, batch, wd in decay),
        *((1, eta, alpha, batch, 0.0, "growth") for eta, alpha, batch in big_batch),
    ]
    epochs = _equal_tau_epochs(spec, [effective_rate(eta, a, b) for _, eta, a, b, _, _ in rows])

    def steps(probe_epochs: float, batch: int) -> int:
        # floor: the probes never spend more than budget.probe_fraction allows.
        return max(1, math.floor(probe_epochs * dataset.train_size / batch))

    return [
        PlannedProbe(
            f"p{i:02d}",
            group,
            ProbeConfig(
                eta,
                alpha,
                wd,
                batch,
                first_probe_seed(spec.seed) + i,
                steps(e, batch),
                nesterov=spec.optimizer.nesterov,
                optimizer=spec.optimizer.type,
            ),
            purpose,
            e,
        )
        for i, ((group, eta, alpha, batch, wd, purpose), e) in enumerate(
            zip(rows, epochs, strict=True)
        )
    ]
