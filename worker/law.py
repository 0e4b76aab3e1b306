"""The growth law and the science rules every stage shares (torch-free: importable anywhere).

The theory (shared/docs/science.md §3–4): while ordered, the order parameter y (J² for the paper's
single tanh layer, χ otherwise) grows linearly, y(t) = y0 + A·t, with A = k·η/((1−α)·B) per epoch.
Weight decay adds a restoring term: dy/dt = A − D·y, D = c·wd·η/((1−α)·B), so y relaxes to A/D.

This module owns which order parameter a spec is steered by (`order_kind`), how a probe's records
turn into that series (`order_series`, `probe_order`: what the fits read and what is stored beside
each probe), the stability bound on the step, and solving the law for the free knobs
(`choose_config`) with its predicted trajectory (`predict`, `edge_epoch`). It imports no torch, so
the API side could use it too; the records are read through the small `OrderRecord` protocol.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np

from app.schemas import (
    EDGE,
    MLPSpec,
    OrderKind,
    OrderParameter,
    PluginModelSpec,
    ProbeOrder,
    RecommendationSpec,
    TorchvisionSpec,
)
from edgetune.schedules import POINTS_PER_EPOCH, Schedule, mean_multiplier, multiplier
from worker import fit

# Only used to place the probes' learning rates; every recommendation uses the fitted k.
PRIOR_K = 11.0
# AdamW (β 0.9/0.999), measured on the paper model (Fashion-MNIST, B 32, 1-epoch probes,
# benchmarks/results/adamw_law_cpu.json): J² grows per optimizer step like PRIOR_K_ADAMW·η^a with
# a ≈ 1.4 (A = 0.10, 0.26, 0.69, 1.8 per epoch at η = 2.5e-4 … 2e-3), steepening above 2e-3
# (6.3 per epoch at 4e-3). Adam's step is normalised per weight, so the law is not the SGD one in
# η/((1−α)B). The prior only places the probes; ADAMW_MAX_LR is the top of the measured range.
PRIOR_K_ADAMW = 6.35
PRIOR_A_ADAMW = 1.4
ADAMW_MAX_LR = 2e-3
DEFAULT_MOMENTUM = 0.9
BASE_BATCH = 32
# With decay saturating at the edge, the run should end within this fraction of the edge.
SATURATION_GAP = 0.05
# Upper end of the ordered range on η/(1−α), where the growth law still holds: on the paper model
# (Fashion-MNIST, B 32) the J² growth is linear in η/((1−α)B) up to ~6e-3 and bends above it
# (k 13–17 instead of 11 at 9.4e-3 and 1.25e-2, benchmarks/results/reproduce_paper_cpu.json), and
# on its 60-epoch grid read at 3 epochs η/(1−α) = 0.3 lost 1.2 points to 0.1–0.2 (suite
# fmnist-paper-60ep). A budget too short to reach the edge inside that range gets its top, 0.2
# (η/((1−α)B) = 6.25e-3 at B 32), not the stability limit (0.8 turned chaotic within half an
# epoch). Larger batches average out gradient noise, so the bound grows like √B (capped at 1).
# A constant measured on Fashion-MNIST: a claim about that data.
MAX_EFFECTIVE_STEP = 0.2


# The schedule a spec that leaves `optimizer.schedule` free gets, with its warm-up as a share of
# the budget. Measured on the paper model (Fashion-MNIST, 20 epochs, 3 seeds,
# benchmarks/results/schedule_check_cpu.json): warmup-cosine at the law's peak rate beat the
# constant answer by 0.9 points of test accuracy; the suite (benchmarks/results/suite/) checks it
# at every budget and model. A claim about those cases.
RECOMMENDED_SCHEDULE: Schedule = "warmup-cosine"
WARMUP_SHARE = 0.05


class OrderRecord(Protocol):
    """What the law reads of one measurement (worker.probe.ProbeRecord has it)."""

    epoch: float
    J: list[float]
    chi: list[float] | None
    lyapunov: float | None


def order_kind(spec: RecommendationSpec) -> OrderKind:
    """What the growth law steers: J² for every MLP and torchvision model, χ for our CNNs.

    For one tanh layer J² is the paper's order parameter. For deeper and non-tanh MLPs χ does not
    grow early in training (E[φ'(h)²] falls while J rises: on the 784-512-512 ReLU and tanh nets
    χ fell 5–15 % over the probes), while J² of the fastest-growing layer grows steadily, and on
    the suite's grids the best configuration of those MLPs ended at max_l J_l ≈ 1 (0.97 ReLU,
    1.02 deep tanh; benchmarks/results/suite/). That measurement, not the theory, is why J² is
    steered there. Where the untrained network starts is judged on `step0_kind`.
    """
    model = spec.model
    if isinstance(model, MLPSpec | TorchvisionSpec | PluginModelSpec):
        return "J2"  # torchvision: no χ without known activations; outside the validated regime
    return "chi"


def step0_kind(spec: RecommendationSpec) -> OrderKind:
    """The order parameter that says, at step 0, whether a network starts at or past its edge:
    J² for one tanh layer (the paper's), χ for other known activations (χ = 1 is where signals
    neither vanish nor explode, whatever the activation: Kaiming-ReLU nets start there)."""
    model = spec.model
    if isinstance(model, MLPSpec) and len(model.hidden) == 1 and model.activation == "tanh":
        return "J2"
    if isinstance(model, TorchvisionSpec | PluginModelSpec):
        return "J2"
    return "chi"


def order_description(kind: OrderKind) -> OrderParameter:
    if kind == "J2":
        return OrderParameter(
            name="J2",
            description="J² = fan_in·var(W) of the hidden layer growing fastest (max over "
            "layers): the paper's order parameter (edge at J = 1)",
        )
    return OrderParameter(
        name="chi",
        description="geometric mean over the iterated hidden layers of "
        "χ_l = J_l²·E[φ'(h_l)²] (edge at χ = 1; J alone misplaces the edge for non-tanh nets)",
    )


def order_series(records: Sequence[OrderRecord], kind: OrderKind) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, y): y = max J² over layers (J2) or the geometric mean of χ_l = exp(2·lyapunov)."""
    t = np.array([r.epoch for r in records], dtype=float)
    if kind == "chi" and all(r.lyapunov is not None for r in records):
        y = np.array([math.exp(2 * float(r.lyapunov or 0.0)) for r in records])
    else:
        y = np.array([float(np.max(np.square(r.J))) for r in records])
    return t, y


def order_layers(records: Sequence[OrderRecord], kind: OrderKind) -> list[list[float]]:
    """Per record, each hidden layer's order parameter: χ_l where the summary is χ, else J_l²."""
    if kind == "chi" and all(r.chi is not None for r in records):
        return [list(r.chi or []) for r in records]
    return [[j * j for j in r.J] for r in records]


def effective_rate(learning_rate: float, momentum: float, batch_size: float) -> float:
    """η/((1−α)·B): what the growth law depends on."""
    return learning_rate / ((1 - momentum) * batch_size)


def probe_order(kind: OrderKind, records: Sequence[OrderRecord], rate: float) -> ProbeOrder:
    """A probe's series as the fits read it, stored beside its records (so no reader re-derives
    the rule); `rate` is the probe's effective learning rate."""
    t, y = order_series(records, kind)
    return ProbeOrder(
        kind=kind,
        effective_rate=rate,
        epoch=t.tolist(),
        value=y.tolist(),
        layers=order_layers(records, kind),
    )


def max_step(batch: int, schedule_mean: float = 1.0, optimizer: str = "sgd") -> float:
    """The largest η/(1−α) the plan probes or recommends at batch size `batch`: for a schedule,
    its peak, whose mean rate (`schedule_mean` of the peak) stays inside the law's range.

    The bound is on the mean because the peak is held briefly: on the paper model (Fashion-MNIST,
    B 32, 3 seeds, warmup-cosine) peaks at η/(1−α) = 0.4 beat 0.2 by 0.7 points at 3 epochs and
    0.3 at 10 (benchmarks/results/schedule_peaks_cpu.json), and ended at J ≈ 1.0 at 10 epochs as
    the law predicts. The peak never exceeds twice the constant bound (the old stability cap).
    """
    if optimizer == "adamw":
        # Adam's step is normalised per weight: no gradient-noise scaling with B.
        return ADAMW_MAX_LR / max(schedule_mean, 0.5)
    bound = MAX_EFFECTIVE_STEP * math.sqrt(max(batch, BASE_BATCH) / BASE_BATCH)
    return min(1.0, bound / max(schedule_mean, 0.5))


def prior_rate(spec: RecommendationSpec, a_target: float, batch: int, train_size: int) -> float:
    """The η/((1−α)B) the prior expects to grow the order parameter at `a_target` per epoch:
    only where the probes go, never the answer (which uses the fitted law)."""
    if spec.optimizer.type == "adamw":
        per_step = a_target / max(1, train_size // batch)
        return (per_step / PRIOR_K_ADAMW) ** (1 / PRIOR_A_ADAMW) / batch
    return a_target / PRIOR_K


def knobs(spec: RecommendationSpec) -> tuple[float, int]:
    """(α, B) the probes run at and the recommendation keeps: the user's, else the defaults.

    The stated criterion for the defaults, from measurements at equal η/((1−α)B) on the paper
    model at 20 epochs (science.md §3): α 0.9 beat 0.5 by 0.4 points (5 seeds) and B 32 beat
    64 and 128 by 0.3. Equal η/((1−α)B) gives the same order-parameter trajectory, so the growth
    law cannot choose between them; accuracy does. A larger B would be faster per epoch (fewer
    steps): that is a compute preference, left to the user (fix optimizer.batch_size).
    """
    momentum = spec.optimizer.momentum
    batch = spec.optimizer.batch_size
    if spec.optimizer.type == "adamw":
        momentum = 0.0  # no SGD momentum: AdamW's β1 is fixed (worker.probe.ADAMW_BETAS)
    return (
        DEFAULT_MOMENTUM if momentum is None else momentum,
        BASE_BATCH if batch is None else batch,
    )


def momentum_free(spec: RecommendationSpec) -> bool:
    """Whether the answer chooses SGD's momentum (never under AdamW, which has none)."""
    return spec.optimizer.type == "sgd" and spec.optimizer.momentum is None


def run_schedule(spec: RecommendationSpec) -> tuple[Schedule, float]:
    """(schedule, warm-up epochs) of the run to be recommended: the user's, else
    RECOMMENDED_SCHEDULE with a warm-up of WARMUP_SHARE of the budget (0 unless warmup-cosine)."""
    opt = spec.optimizer
    schedule = RECOMMENDED_SCHEDULE if opt.schedule is None else opt.schedule
    if schedule != "warmup-cosine":
        return schedule, 0.0
    if opt.warmup_epochs is not None:
        return schedule, float(opt.warmup_epochs)
    return schedule, WARMUP_SHARE * float(spec.budget.epochs)


# A growth law: (η, α, B) → growth rate A of the order parameter per epoch.
GrowthLaw = Callable[[float, float, float], float]


def _eta_law(law: GrowthLaw, alpha: float, batch: float, eta: float) -> float:
    return law(eta, alpha, batch)


def _solve(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """x in [lo, hi] with f(x) = target for increasing f (bisection in log x); clamps."""
    if f(lo) >= target:
        return lo
    if f(hi) <= target:
        return hi
    a, b = math.log(lo), math.log(hi)
    for _ in range(200):
        mid = 0.5 * (a + b)
        if f(math.exp(mid)) < target:
            a = mid
        else:
            b = mid
    return math.exp(0.5 * (a + b))


@dataclass(frozen=True)
class Choice:
    learning_rate: float  # the peak of a schedule
    momentum: float
    batch_size: int
    weight_decay: float
    epochs: float
    growth: float  # predicted A of the chosen configuration at its peak rate, per epoch
    decay_rate: float  # predicted D at the peak rate, per epoch
    warnings: tuple[str, ...]
    schedule: Schedule = "constant"
    warmup_epochs: float = 0.0
    rate_exponent: float = 1.0  # A ∝ η^a: how the schedule's multiplier enters the growth
    # The free learning rate sits at max_step: the budget is too short to reach the edge inside
    # the range where the law holds (by design: the best short runs stop short of it too).
    capped: bool = False

    def shape(self, t: np.ndarray) -> np.ndarray:
        """m(t)^a: the growth rate at epoch t as a fraction of the peak's."""
        return (
            np.array([multiplier(self.schedule, x, self.epochs, self.warmup_epochs) for x in t])
            ** self.rate_exponent
        )


def _growth_target(y_eq: float, y0: float, epochs: float, warnings: list[str]) -> float:
    """The growth rate A that meets the edge at the end of the budget under equilibrium y_eq."""
    gap = EDGE - y0
    if y_eq < EDGE:
        warnings.append(
            f"the fixed weight decay holds the order parameter at {y_eq:.2f} < 1: the edge cannot "
            "be reached; recommending the fastest approach to that equilibrium"
        )
        return y_eq / epochs * math.log((y_eq - y0) / (0.03 * y_eq)) if y_eq > y0 else 0.0
    if math.isfinite(y_eq):
        if y_eq - EDGE < 1e-6:  # saturating at the edge
            return math.log(gap / SATURATION_GAP) / epochs
        # decay too weak to hold the edge: cross it exactly at the end of the budget
        return y_eq / epochs * math.log((y_eq - y0) / (y_eq - EDGE))
    return gap / epochs


def _solve_knobs(
    spec: RecommendationSpec,
    law: GrowthLaw,
    a_target: float,
    train_size: int,
    batch_candidates: list[int],
    warnings: list[str],
    schedule_mean: float = 1.0,
) -> tuple[float, float, int]:
    """(η, α, B) for the free knobs so that the law gives `a_target`."""
    opt = spec.optimizer
    top = partial(max_step, schedule_mean=schedule_mean, optimizer=opt.type)
    alpha, _ = knobs(spec)
    if opt.learning_rate is None:
        # η for each candidate batch size; keep the largest batch whose η stays stable.
        batches = [opt.batch_size] if opt.batch_size is not None else sorted(batch_candidates)
        etas = {b: _solve(partial(_eta_law, law, alpha, b), a_target, 1e-9, 1e3) for b in batches}
        stable = [b for b in batches if etas[b] <= top(b) * (1 - alpha)]
        batch = max(stable) if stable else min(batches)
        eta = etas[batch]
        if eta > top(batch) * (1 - alpha):
            warnings.append(
                f"the budget needs η/(1−α) = {eta / (1 - alpha):.3g}, above the range where the "
                f"growth law holds ({top(batch):.3g} at B = {batch}); capped: the edge is "
                "reached later, as the best short runs do"
            )
            eta = top(batch) * (1 - alpha)
        return eta, alpha, batch
    eta = opt.learning_rate
    if opt.batch_size is None:
        # A falls with B: solve for 1/B.
        inv = _solve(lambda x: law(eta, alpha, 1 / x), a_target, 1 / train_size, 1.0)
        return eta, alpha, int(min(train_size, max(1, round(1 / inv))))
    batch = opt.batch_size
    if momentum_free(spec):
        low, high = law(eta, 0.0, batch), law(eta, 0.99, batch)
        if a_target <= low:
            alpha = 0.0
        elif a_target >= high:
            alpha = 0.99
        else:
            inv = _solve(lambda x: law(eta, 1 - 1 / x, batch), a_target, 1.0, 100.0)
            alpha = 1 - 1 / inv
    return eta, alpha, batch


def choose_config(
    spec: RecommendationSpec,
    *,
    k: float,
    c: float | None,
    y0: float,
    train_size: int,
    batch_candidates: list[int],
    growth_law: GrowthLaw | None = None,
    rate_exponent: float = 1.0,
) -> Choice:
    """Solve the growth law for the free knobs so that y meets the edge within the budget.

    A = growth_law(η, α, B) per epoch — by default the theory's k·η/((1−α)·B); the fitted power
    law when the probes say the exponents differ from 1 — and D = c·wd·η/((1−α)·B).
    `batch_candidates` holds the batch sizes over which the collapse in η/B was verified (largest
    is preferred: fewer steps for the same trajectory); `max_step` bounds η/(1−α).
    """
    law: GrowthLaw = growth_law or (lambda eta, alpha, batch: k * eta / ((1 - alpha) * batch))
    opt = spec.optimizer
    epochs = spec.budget.epochs
    warnings: list[str] = []

    # Decay left free: reach the edge exactly at the end of the budget without decay. Measured on
    # the paper model (benchmarks/results/decay_strategy_cpu.json): at a 20-epoch budget, the
    # saturating alternative (decay at the fitted edge equilibrium, ~4× the effective learning
    # rate to get there in time) overshot to J = 1.24 and lost 3 points of test accuracy, while
    # edge-at-the-end matched the best configuration of the 90-config grid. The decay that holds
    # the edge for longer training is still fitted and reported (edge.saturating_weight_decay).
    wd = 0.0 if opt.weight_decay is None else opt.weight_decay
    y_eq = k / (c * wd) if (c and wd > 0) else math.inf
    # A schedule integrates the rate: its peak's growth is the constant run's over the mean of
    # m(t)^a (exact without decay; with decay the same mean is a first-order approximation).
    schedule, warmup = run_schedule(spec)
    mean = mean_multiplier(schedule, epochs, warmup, rate_exponent)
    rate_mean = mean_multiplier(schedule, epochs, warmup)
    a_target = _growth_target(y_eq, y0, epochs, warnings) / mean
    eta, alpha, batch = _solve_knobs(
        spec, law, a_target, train_size, batch_candidates, warnings, rate_mean
    )

    growth = law(eta, alpha, batch)
    decay_rate = (c or 0.0) * wd * eta / ((1 - alpha) * batch)
    run_epochs = epochs
    if decay_rate == 0 and growth > 0 and schedule == "constant":
        t_edge = (EDGE - y0) / growth
        if t_edge < epochs * 0.99:
            # Without decay the guideline is to stop at the edge (science.md §4, step 4).
            run_epochs = round(t_edge, 1)
            warnings.append(
                f"with the fixed knobs and no decay the edge is reached at epoch {t_edge:.1f}; "
                "recommending to stop there"
            )
        elif t_edge > epochs * 1.05:
            warnings.append(
                f"with the fixed knobs the edge is reached only at epoch {t_edge:.1f}, after the "
                f"budget of {epochs:g}"
            )
    return Choice(
        eta,
        alpha,
        batch,
        wd,
        run_epochs,
        growth,
        decay_rate,
        tuple(warnings),
        schedule,
        warmup,
        rate_exponent,
        opt.learning_rate is None
        and eta >= max_step(batch, rate_mean, opt.type) * (1 - alpha) * (1 - 1e-9),
    )


def predict(choice: Choice, y0: float, points: int = 41) -> tuple[np.ndarray, np.ndarray]:
    """The predicted order-parameter trajectory of the recommended run."""
    t = np.linspace(0.0, choice.epochs, points)
    return t, trajectory(choice, y0, t)


def trajectory(choice: Choice, y0: float, t: np.ndarray) -> np.ndarray:
    """The predicted order parameter of the chosen run at epochs t."""
    if choice.schedule == "constant":
        return fit.predict_trajectory(t, choice.growth, choice.decay_rate, y0)
    return _integrate(choice, y0, t)


def _integrate(choice: Choice, y0: float, t_out: np.ndarray) -> np.ndarray:
    """dy/dt = A·m^a − D·m·y under a schedule, on a fine grid (midpoint rule), read at t_out."""
    n = max(400, int(POINTS_PER_EPOCH * choice.epochs))
    t = np.linspace(0.0, choice.epochs, n + 1)
    h = choice.epochs / n
    mid = t[:-1] + h / 2
    growth = choice.growth * choice.shape(mid)
    m = np.array([multiplier(choice.schedule, x, choice.epochs, choice.warmup_epochs) for x in mid])
    decay = choice.decay_rate * m
    y = np.empty(n + 1)
    y[0] = y0
    for i in range(n):
        y[i + 1] = y[i] + h * (growth[i] - decay[i] * y[i])
    return np.interp(t_out, t, y)


def edge_epoch(choice: Choice, y0: float) -> float | None:
    """When y first reaches the edge (or within SATURATION_GAP of it when saturating)."""
    if choice.growth <= 0:
        return None
    if choice.schedule != "constant":
        t = np.linspace(0.0, choice.epochs, 2001)
        y = _integrate(choice, y0, t)
        above = np.flatnonzero(y >= EDGE - 1e-4)  # the solve puts y(T) at 1 to ~1e-6
        return float(t[above[0]]) if above.size else None
    if choice.decay_rate == 0:
        return (EDGE - y0) / choice.growth
    y_eq = choice.growth / choice.decay_rate
    target = EDGE if y_eq > EDGE + 1e-6 else EDGE - SATURATION_GAP
    if y_eq <= target:
        return None
    return math.log((y_eq - y0) / (y_eq - target)) / choice.decay_rate
