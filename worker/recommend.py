"""Probe plan + scaling-law fits → hyperparameters that put training at the edge of chaos.

The theory (shared/docs/science.md §3–4): while ordered, the order parameter y (J² for the paper's
single tanh layer, χ otherwise) grows linearly, y(t) = y0 + A·t, with A = k·η/((1−α)·B) per epoch.
Weight decay adds a restoring term: dy/dt = A − D·y, D = c·wd·η/((1−α)·B), so y relaxes to A/D.
The plan measures A at several effective learning rates (and the exponents of the knobs the user
left free), D from a probe with decay, and solves for the configuration whose predicted trajectory
reaches the edge y = 1 within the budget and, with decay, stays there.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import torch

from app.schemas import MLPSpec, RecommendationSpec, TorchvisionSpec
from worker import fit
from worker.data import Dataset
from worker.probe import ProbeConfig, ProbeProgress, ProbeRecord, ProbeResult, run_population

EDGE = 1.0
# Only used to place the probes' learning rates; every recommendation uses the fitted k.
PRIOR_K = 11.0
DEFAULT_MOMENTUM = 0.9
BASE_BATCH = 32
# With decay saturating at the edge, the run should end within this fraction of the edge.
SATURATION_GAP = 0.05
# Probe learning rates relative to the target: they bracket it, so the recommendation
# interpolates. Far above it the growth law bends upward (k rises with η/((1−α)B): 10.5 at 3e-3,
# 11.8 at 6e-3, 15+ at 1.25e-2 on Fashion-MNIST, benchmarks/results/reproduce_paper_cpu.json),
# and a wider bracket would bias k upward.
ETA_FACTORS = (0.5, 1.0, 2.0)
# Stability bound on η/(1−α): on the paper model (Fashion-MNIST) η/(1−α) = 0.4 trains well at
# B = 32 and 0.8 turns chaotic within half an epoch, while 0.8 is stable at B = 128. Larger
# batches average out gradient noise, so the bound grows like √B (capped at 1) from 0.4 at B = 32.
MAX_EFFECTIVE_STEP = 0.4
MAX_PROBE_EPOCHS = 4.0
# A probe's J² series is fitted after the fast initial transient (science.md §3: epoch 1).
TRANSIENT_EPOCHS = 1.0
MEASUREMENTS_PER_PROBE = 40

OrderKind = Literal["J2", "chi"]


@dataclass(frozen=True)
class PlannedProbe:
    key: str  # stable within a job: stored probes are matched by key on resume
    group: int  # probes of one group share a batch size and train as one population
    config: ProbeConfig
    purpose: Literal["growth", "decay"]
    epochs: float


def order_kind(spec: RecommendationSpec) -> OrderKind:
    """J² for one square-ish tanh hidden layer (the paper's setting), χ for everything else."""
    model = spec.model
    if isinstance(model, MLPSpec) and len(model.hidden) == 1 and model.activation == "tanh":
        return "J2"
    if isinstance(model, TorchvisionSpec):
        return "J2"  # no χ without known activations; flagged as outside the validated regime
    return "chi"


def order_series(
    records: list[ProbeRecord], kind: OrderKind, layers: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, y): y = mean J² over layers (J2) or the geometric mean of χ_l = exp(2·lyapunov)."""
    t = np.array([r.epoch for r in records], dtype=float)
    if kind == "chi" and all(r.lyapunov is not None for r in records):
        y = np.array([math.exp(2 * float(r.lyapunov or 0.0)) for r in records])
    else:
        y = np.array(
            [
                float(np.mean(np.square(r.J if layers is None else [r.J[i] for i in layers])))
                for r in records
            ]
        )
    return t, y


def _initial_order(spec: RecommendationSpec) -> float:
    """The prior y0 used to place the probes (the measured y0 is used for the recommendation)."""
    model = spec.model
    if isinstance(model, MLPSpec) and model.init.scheme == "edge":
        return model.init.J**2
    return 0.25


def max_step(batch: int) -> float:
    """The largest η/(1−α) the plan probes or recommends at batch size `batch`."""
    return min(1.0, MAX_EFFECTIVE_STEP * math.sqrt(max(batch, BASE_BATCH) / BASE_BATCH))


def _knobs(spec: RecommendationSpec) -> tuple[float, int]:
    momentum = spec.optimizer.momentum
    batch = spec.optimizer.batch_size
    return (
        DEFAULT_MOMENTUM if momentum is None else momentum,
        BASE_BATCH if batch is None else batch,
    )


def target_growth(y0: float, epochs: float, decay_free: bool, fixed_decay: float | None) -> float:
    """The growth rate A that brings y to the edge by the end of the budget.

    Without decay (the default when decay is free, see `choose_config`), y = y0 + A·t reaches the
    edge exactly at the end (science.md §4 step 4: "or without decay stop at t_edge"). With a
    user-fixed decay saturating at the edge (D = A), y(t) = 1 − (1 − y0)·e^(−A·t) reaches within
    SATURATION_GAP of the edge at the end.
    """
    gap = max(EDGE - y0, 1e-3)
    if fixed_decay is not None and fixed_decay > 0:
        return math.log(gap / SATURATION_GAP) / epochs
    return gap / epochs


def plan_probes(spec: RecommendationSpec, dataset: Dataset) -> list[PlannedProbe]:
    """A few short probes, run as populations, that measure the growth law and the decay rate."""
    opt = spec.optimizer
    alpha0, batch0 = _knobs(spec)
    batch0 = min(batch0, dataset.train_size)
    # A net that starts at or past the edge still gets probed (to measure and report it).
    y0 = min(_initial_order(spec), 0.5)
    decay_free = opt.weight_decay is None
    a_target = target_growth(y0, spec.budget.epochs, decay_free, opt.weight_decay)
    eff_target = a_target / PRIOR_K  # η/((1−α)B) the prior expects

    growth: list[tuple[float, float, int]] = []  # (η, α, B)
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
    unique: list[tuple[float, float, int]] = []
    for g in growth:
        if not any(abs(g[0] / u[0] - 1) < 0.05 and g[1:] == u[1:] for u in unique):
            unique.append(g)
    growth = unique

    big_batch: list[tuple[float, float, int]] = []
    batch1 = 4 * batch0
    if opt.batch_size is None and dataset.train_size // batch1 >= 50:
        # Same η at 4×B measures the exponent of 1/B; 4×η at 4×B tests the collapse in η/B.
        big_batch.append((eta_mid, alpha0, batch1))
        if opt.learning_rate is None:
            eta_big = min(eta_mid * 4, max_step(batch1) * (1 - alpha0))
            big_batch.append((eta_big, alpha0, batch1))

    decay: list[tuple[float, float, int, float]] = []
    if decay_free or (opt.weight_decay or 0) > 0:
        # Twin of the fastest growth probe (all lie inside the stable range), with decay: the
        # bend of y measures D. Without a user value, pick a decay whose equilibrium (prior)
        # sits at y ≈ 0.5, so the bend is visible within the probe.
        eta_d, alpha_d, batch_d = max(growth, key=lambda g: g[0] / ((1 - g[1]) * g[2]))
        wd = opt.weight_decay if opt.weight_decay else PRIOR_K / (2 * dataset.train_size * 0.5)
        decay.append((eta_d, alpha_d, batch_d, wd))

    n = len(growth) + len(big_batch) + len(decay)
    probe_epochs = min(MAX_PROBE_EPOCHS, spec.budget.epochs * spec.budget.probe_fraction / n)
    plan: list[PlannedProbe] = []

    def add(group: int, eta: float, alpha: float, batch: int, wd: float, purpose: str) -> None:
        # floor: the probes never spend more than budget.probe_fraction allows.
        steps = max(1, math.floor(probe_epochs * dataset.train_size / batch))
        config = ProbeConfig(eta, alpha, wd, batch, spec.seed * 1000 + len(plan), steps)
        plan.append(
            PlannedProbe(
                f"p{len(plan):02d}",
                group,
                config,
                purpose,  # type: ignore[arg-type]
                probe_epochs,
            )
        )

    for eta, alpha, batch in growth:
        add(0, eta, alpha, batch, 0.0, "growth")
    for eta, alpha, batch, wd in decay:
        add(0, eta, alpha, batch, wd, "decay")
    for eta, alpha, batch in big_batch:
        add(1, eta, alpha, batch, 0.0, "growth")
    return plan


def _stop_rule(
    probes: list[PlannedProbe], kind: OrderKind
) -> Callable[[int, list[ProbeRecord]], bool]:
    """Stop a growth probe once its slope is known to ±2 % (95 % CI) or it reaches the edge."""

    def stop(member: int, records: list[ProbeRecord]) -> bool:
        if probes[member].purpose != "growth" or len(records) < 8:
            return False
        t, y = order_series(records, kind)
        if y[-1] >= 0.95 * EDGE:
            return True
        keep = t >= min(TRANSIENT_EPOCHS, 0.5 * probes[member].epochs)
        if keep.sum() < 8:
            return False
        try:
            growth = fit.fit_growth(t[keep], y[keep])
        except fit.FitError:
            return False
        return bool(growth.A.value > 0 and growth.A.relative_half_width < 0.02)

    return stop


def run_group(
    spec: RecommendationSpec,
    dataset: Dataset,
    probes: list[PlannedProbe],
    *,
    device: torch.device,
    on_progress: Callable[[ProbeProgress], bool] | None = None,
) -> list[ProbeResult]:
    """Train one group of probes as a population; results in the order of `probes`."""
    configs = [p.config for p in probes]
    # Enough points per probe for the slope fit (~40), whatever the dataset size; evaluations
    # (validation, APJN) are ~10× rarer.
    measure_every = max(1, max(c.steps for c in configs) // MEASUREMENTS_PER_PROBE)
    return run_population(
        spec.model,
        dataset,
        configs,
        device=device,
        measure_every=measure_every,
        eval_every=measure_every * 10,
        on_progress=on_progress,
        stop_when=_stop_rule(probes, order_kind(spec)),
    )


@dataclass(frozen=True)
class MeasuredGrowth:
    probe: PlannedProbe
    result: ProbeResult
    y0: float
    growth: fit.GrowthFit | None
    note: str | None


def _measure_growth(probe: PlannedProbe, result: ProbeResult, kind: OrderKind) -> MeasuredGrowth:
    t, y = order_series(result.records, kind)
    y0 = float(y[0]) if len(y) else math.nan
    if result.outcome == "diverged":
        return MeasuredGrowth(probe, result, y0, None, f"diverged: {result.reason}")
    if y0 >= EDGE:
        return MeasuredGrowth(probe, result, y0, None, "chaotic from the start")
    # Fit the ordered part after the transient; short probes keep their second half.
    t_min = min(TRANSIENT_EPOCHS, 0.5 * float(t[-1])) if len(t) else 0.0
    try:
        g = fit.fit_growth(t, y, t_min=t_min, edge=0.9 * EDGE)
    except fit.FitError as exc:
        return MeasuredGrowth(probe, result, y0, None, str(exc))
    if g.chaotic:
        # It crossed the edge during the transient: too fast to measure a growth rate.
        return MeasuredGrowth(
            probe,
            result,
            y0,
            None,
            "crossed the edge within the transient; "
            "too fast for the growth law (left out of the fits)",
        )
    return MeasuredGrowth(probe, result, y0, g, None)


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
    learning_rate: float
    momentum: float
    batch_size: int
    weight_decay: float
    epochs: float
    growth: float  # predicted A of the chosen configuration, per epoch
    decay_rate: float  # predicted D, per epoch
    warnings: tuple[str, ...]


def choose_config(
    spec: RecommendationSpec,
    *,
    k: float,
    c: float | None,
    y0: float,
    train_size: int,
    batch_candidates: list[int],
    growth_law: GrowthLaw | None = None,
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
    alpha = DEFAULT_MOMENTUM if opt.momentum is None else opt.momentum

    # Decay left free: reach the edge exactly at the end of the budget without decay. Measured on
    # the paper model (benchmarks/results/decay_strategy_cpu.json): at a 20-epoch budget, the
    # saturating alternative (decay at the fitted edge equilibrium, ~4× the effective learning
    # rate to get there in time) overshot to J = 1.24 and lost 3 points of test accuracy, while
    # edge-at-the-end matched the best configuration of the 90-config grid. The decay that holds
    # the edge for longer training is still fitted and reported (edge.saturating_weight_decay).
    wd = 0.0 if opt.weight_decay is None else opt.weight_decay
    y_eq = k / (c * wd) if (c and wd > 0) else math.inf

    gap = EDGE - y0
    if y_eq < EDGE:
        warnings.append(
            f"the fixed weight decay holds the order parameter at {y_eq:.2f} < 1: the edge cannot "
            "be reached; recommending the fastest approach to that equilibrium"
        )
        a_target = y_eq / epochs * math.log((y_eq - y0) / (0.03 * y_eq)) if y_eq > y0 else 0.0
    elif math.isfinite(y_eq):
        if y_eq - EDGE < 1e-6:  # saturating at the edge
            a_target = math.log(gap / SATURATION_GAP) / epochs
        else:  # decay too weak to hold the edge: cross it exactly at the end of the budget
            a_target = y_eq / epochs * math.log((y_eq - y0) / (y_eq - EDGE))
    else:
        a_target = gap / epochs

    if opt.learning_rate is None:
        # η for each candidate batch size; keep the largest batch whose η stays stable.
        batches = [opt.batch_size] if opt.batch_size is not None else sorted(batch_candidates)
        etas = {b: _solve(partial(_eta_law, law, alpha, b), a_target, 1e-9, 1e3) for b in batches}
        stable = [b for b in batches if etas[b] <= max_step(b) * (1 - alpha)]
        batch = max(stable) if stable else min(batches)
        eta = etas[batch]
        if eta > max_step(batch) * (1 - alpha):
            warnings.append(
                f"the budget needs η/(1−α) = {eta / (1 - alpha):.3g}, above the stable range "
                f"({max_step(batch):.3g} at B = {batch}); capped: the edge is reached later"
            )
            eta = max_step(batch) * (1 - alpha)
    else:
        eta = opt.learning_rate
        if opt.batch_size is None:
            # A falls with B: solve for 1/B.
            inv = _solve(lambda x: law(eta, alpha, 1 / x), a_target, 1 / train_size, 1.0)
            batch = int(min(train_size, max(1, round(1 / inv))))
        elif opt.momentum is None:
            batch = opt.batch_size
            low, high = law(eta, 0.0, batch), law(eta, 0.99, batch)
            if a_target <= low:
                alpha = 0.0
            elif a_target >= high:
                alpha = 0.99
            else:
                inv = _solve(lambda x: law(eta, 1 - 1 / x, batch), a_target, 1.0, 100.0)
                alpha = 1 - 1 / inv
        else:
            batch = opt.batch_size
    growth = law(eta, alpha, batch)
    decay_rate = (c or 0.0) * wd * eta / ((1 - alpha) * batch)
    run_epochs = epochs
    if decay_rate == 0 and growth > 0:
        t_edge = gap / growth
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
    return Choice(eta, alpha, batch, wd, run_epochs, growth, decay_rate, tuple(warnings))


def predict(choice: Choice, y0: float, points: int = 41) -> tuple[np.ndarray, np.ndarray]:
    """The predicted order-parameter trajectory of the recommended run."""
    t = np.linspace(0.0, choice.epochs, points)
    return t, fit.predict_trajectory(t, choice.growth, choice.decay_rate, y0)


def edge_epoch(choice: Choice, y0: float) -> float | None:
    """When y first reaches the edge (or within SATURATION_GAP of it when saturating)."""
    if choice.growth <= 0:
        return None
    if choice.decay_rate == 0:
        return (EDGE - y0) / choice.growth
    y_eq = choice.growth / choice.decay_rate
    target = EDGE if y_eq > EDGE + 1e-6 else EDGE - SATURATION_GAP
    if y_eq <= target:
        return None
    return math.log((y_eq - y0) / (y_eq - target)) / choice.decay_rate


def _no_recommendation(reason: str, kind: OrderKind, warnings: list[str]) -> dict[str, Any]:
    return {
        "hyperparameters": None,
        "edge": {"order_parameter": _order_description(kind)},
        "validity": {
            "ok": False,
            "reason": reason,
            "flags": {"no_recommendation": True},
            "warnings": [reason, *warnings],
        },
    }


def _order_description(kind: OrderKind) -> dict[str, str]:
    if kind == "J2":
        return {
            "name": "J2",
            "description": "J² = fan_in·var(W) of the hidden layer(s): the "
            "paper's order parameter (edge at J = 1)",
        }
    return {
        "name": "chi",
        "description": "geometric mean over the iterated hidden layers of "
        "χ_l = J_l²·E[φ'(h_l)²] (edge at χ = 1; J alone misplaces the edge for non-tanh nets)",
    }


def _free_knobs(spec: RecommendationSpec) -> tuple[fit.Knob, ...]:
    opt = spec.optimizer
    free: list[fit.Knob] = []
    if opt.learning_rate is None:
        free.append("eta")
    if opt.batch_size is None:
        free.append("batch")
    if opt.momentum is None:
        free.append("momentum")
    return tuple(free)


def _validated_regime(spec: RecommendationSpec, kind: OrderKind) -> str | None:
    """Why the model lies outside the regime where the scaling laws were validated, or None."""
    model = spec.model
    if isinstance(model, TorchvisionSpec):
        return (
            "torchvision models (BatchNorm, residual connections) are outside the regime "
            "where the scaling laws were validated; J² is only a proxy there"
        )
    if kind == "chi":
        return (
            "the scaling laws were validated on one tanh hidden layer (Fashion-MNIST); for "
            "deeper or non-tanh networks they are an extrapolation (science.md §6)"
        )
    if spec.dataset.name not in ("fashion-mnist", "mnist"):
        return "the scaling laws were validated on Fashion-MNIST; other data is an extrapolation"
    return None


def _evaluate(
    spec: RecommendationSpec, dataset: Dataset, result: ProbeResult, device: torch.device
) -> dict[str, float]:
    """Test loss and accuracy of a trained member's final parameters."""
    from worker.probe import init_model

    assert result.params is not None
    model = init_model(spec.model, dataset, result.config.seed)
    model.load_state_dict(result.params, strict=False)
    model.to(device).eval()
    data = dataset.to(device)
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(data.x_test), 1000):
            logits = model(data.x_test[i : i + 1000])
            y = data.y_test[i : i + 1000]
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
    n = len(data.x_test)
    return {"test_loss": loss_sum / n, "test_accuracy": correct / n}


def recommend(
    spec: RecommendationSpec,
    dataset: Dataset,
    planned: list[PlannedProbe],
    results: dict[str, ProbeResult],
    *,
    device: torch.device,
    on_progress: Callable[[ProbeProgress], bool] | None = None,
    cost: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit the probes and solve for the recommended configuration (the result JSON)."""
    kind = order_kind(spec)
    warnings: list[str] = []
    flags: dict[str, bool] = {}
    growths = [
        _measure_growth(p, results[p.key], kind)
        for p in planned
        if p.purpose == "growth" and p.key in results
    ]
    for g in growths:
        if g.note:
            warnings.append(
                f"probe {g.probe.key} (η={g.probe.config.learning_rate:.3g}, "
                f"α={g.probe.config.momentum:g}, B={g.probe.config.batch_size}): "
                f"{g.note}"
            )
    flags["probe_diverged"] = any(g.result.outcome == "diverged" for g in growths)
    y0s = [g.y0 for g in growths if math.isfinite(g.y0)]
    if not y0s:
        return _no_recommendation("no probe produced a measurement", kind, warnings)
    y0 = float(np.median(y0s))
    if y0 >= EDGE:
        flags["chaotic_from_start"] = True
        return _no_recommendation(
            f"the network starts chaotic (order parameter {y0:.2f} ≥ 1 at initialisation): "
            "training can only move it further from the edge. Initialise with a smaller "
            "weight scale (e.g. init: {scheme: edge, J: 0.5}) and ask again.",
            kind,
            warnings,
        )
    usable = [g for g in growths if g.growth is not None and g.growth.A.value > 0]
    if not usable:
        return _no_recommendation(
            "no probe showed measurable growth of the order parameter in the ordered phase",
            kind,
            warnings,
        )

    for g in usable:
        assert g.growth is not None
        warnings.extend(f"probe {g.probe.key}: {w}" for w in g.growth.warnings)
    flags["low_r2"] = any((g.growth.r2 or 0) < 0.98 for g in usable if g.growth)
    flags["not_linear"] = any(not g.growth.linear for g in usable if g.growth)

    cfgs = [g.probe.config for g in usable]
    a_est = [g.growth.A for g in usable if g.growth]
    free = tuple(
        knob
        for knob, values in (
            ("eta", {c.learning_rate for c in cfgs}),
            ("batch", {c.batch_size for c in cfgs}),
            ("momentum", {c.momentum for c in cfgs}),
        )
        if knob in _free_knobs(spec) and len(values) > 1
    )
    n_params = 1 + len(free)
    # Unweighted: the scatter of k between configurations (10.7–12.8 on Fashion-MNIST) is far
    # larger than each slope's own error, so per-probe weights would overstate the precision.
    try:
        scaling = fit.fit_scaling(
            [a.value for a in a_est],
            [c.learning_rate for c in cfgs],
            [c.batch_size for c in cfgs],
            [c.momentum for c in cfgs],
            # With no residual degrees of freedom the slopes' own errors are all there is.
            A_se=[max(a.se, 1e-3 * a.value) for a in a_est] if len(a_est) <= n_params else None,
            free=free,
        )
    except fit.FitError as exc:
        return _no_recommendation(f"the scaling fit failed: {exc}", kind, warnings)
    warnings.extend(scaling.warnings)
    k = scaling.k_theory.value
    flags["exponents_off"] = not scaling.theory_consistent
    if not scaling.theory_consistent:
        warnings.append(
            "a fitted exponent's 95% interval excludes the theory's 1: the collapse "
            "in η/((1−α)B) is only approximate for this model"
        )

    # Decay: fit the bend of each decay probe, with A from its no-decay twin.
    decay_fit: fit.DecayFit | None = None
    decay_probe: fit.Knobs | None = None
    c_est: fit.Estimate | None = None
    for p in planned:
        if p.purpose != "decay" or p.key not in results:
            continue
        cfg = p.config
        knobs = fit.Knobs(cfg.learning_rate, cfg.momentum, cfg.batch_size, cfg.weight_decay)
        a_twin = scaling.predict_A(cfg.learning_rate, cfg.batch_size, cfg.momentum, theory=True)
        t, y = order_series(results[p.key].records, kind)
        try:
            decay_fit = fit.fit_decay(
                t, y, A=a_twin.value, t_min=min(TRANSIENT_EPOCHS, 0.5 * float(t[-1]))
            )
        except fit.FitError as exc:
            warnings.append(f"decay probe {p.key}: {exc}")
            continue
        warnings.extend(f"decay probe {p.key}: {w}" for w in decay_fit.warnings)
        if decay_fit.D.value > 0:
            decay_probe = knobs
            c_est = fit.decay_coefficient(decay_fit.D, knobs)

    # Batch sizes over which the collapse in η/B held in the probes (largest preferred).
    alpha0, batch0 = _knobs(spec)
    candidates = [batch0]
    big = [g for g in usable if g.probe.group == 1]
    if spec.optimizer.batch_size is None and big:
        b_exp = scaling.exponent("batch")
        if b_exp.fitted and b_exp.value.contains(1.0) or abs(b_exp.value.value - 1) < 0.15:
            candidates = [batch0, 2 * batch0, 4 * batch0]
        else:
            warnings.append(
                f"growth did not scale as 1/B (exponent {b_exp.value.value:.2f}); "
                f"keeping batch size {batch0}"
            )
    # Theory's exponents when the probes agree with them (far better determined); otherwise the
    # fitted power law, which interpolates between the probes bracketing the target.
    theory = scaling.theory_consistent

    def growth_law(eta: float, alpha: float, batch: float) -> float:
        return scaling.predict_A(eta, batch, alpha, theory=theory).value

    choice = choose_config(
        spec,
        k=k,
        c=c_est.value if c_est else None,
        y0=y0,
        train_size=dataset.train_size,
        batch_candidates=candidates,
        growth_law=growth_law,
    )
    warnings.extend(choice.warnings)
    run = fit.Knobs(choice.learning_rate, choice.momentum, choice.batch_size, choice.weight_decay)
    a_run = scaling.predict_A(run.eta, run.batch, run.momentum, theory=theory)
    saturating: dict[str, Any] | None = None
    if decay_fit is not None and decay_probe is not None:
        # The decay whose equilibrium A/D sits at the edge: for training beyond the budget
        # (science.md §4 step 3); independent of η, α and B under the growth law.
        edge_decay = fit.edge_weight_decay(a_run, decay_fit.D, probe=decay_probe, run=run)
        saturating = {
            **edge_decay.to_dict(),
            "note": "weight_decay that holds the order parameter at the edge when training "
            "longer than the recommended epochs; the recommended run itself reaches the edge at "
            "its end without decay",
        }

    t_pred, y_pred = predict(choice, y0)
    t_edge = edge_epoch(choice, y0)
    flags["edge_unreachable"] = t_edge is None or t_edge > choice.epochs * 1.05
    probed_eff = [c.learning_rate / ((1 - c.momentum) * c.batch_size) for c in cfgs]
    run_eff = run.effective_rate
    flags["extrapolated"] = not (min(probed_eff) * 0.5 <= run_eff <= max(probed_eff) * 1.5)
    if flags["extrapolated"]:
        warnings.append(
            f"the recommended η/((1−α)B) = {run_eff:.3g} lies outside the probed "
            f"range [{min(probed_eff):.3g}, {max(probed_eff):.3g}]"
        )
    probe_epochs = max(p.epochs for p in planned)
    flags["short_probes"] = probe_epochs < 1.0
    if flags["short_probes"]:
        warnings.append(
            f"probes ran only {probe_epochs:.2f} epochs (probe budget): the initial "
            "transient dominates and k is likely overestimated; raise "
            "budget.probe_fraction for a more reliable result"
        )
    regime = _validated_regime(spec, kind)
    flags["outside_validated_regime"] = regime is not None
    if regime:
        warnings.append(regime)

    result: dict[str, Any] = {
        "hyperparameters": {
            "learning_rate": choice.learning_rate,
            "momentum": choice.momentum,
            "batch_size": choice.batch_size,
            "weight_decay": choice.weight_decay,
            "epochs": choice.epochs,
            "paper_lambda": choice.weight_decay / 2,
            "torch_sgd_kwargs": {
                "lr": choice.learning_rate,
                "momentum": choice.momentum,
                "weight_decay": choice.weight_decay,
            },
        },
        "edge": {
            "order_parameter": _order_description(kind),
            "initial": y0,
            "predicted_edge_epoch": t_edge,
            "predicted_final": float(y_pred[-1]),
            "predicted_trajectory": {"epoch": t_pred.tolist(), "value": y_pred.tolist()},
            "growth_rate_per_epoch": a_run.to_dict(),
            "decay_rate_per_epoch": choice.decay_rate,
            "k": scaling.k_theory.to_dict(),
            "growth_law": "A = k·η/((1−α)B) (theory's exponents; the probes agree)"
            if theory
            else "A = k·η^a·(1/B)^b·(1/(1−α))^c with the fitted exponents (the probes' exponents "
            "differ from 1)",
            "scaling": scaling.to_dict(),
            "decay_fit": decay_fit.to_dict() if decay_fit else None,
            "decay_coefficient": c_est.to_dict() if c_est else None,
            "saturating_weight_decay": saturating,
            "probes": [
                {
                    "key": g.probe.key,
                    "learning_rate": g.probe.config.learning_rate,
                    "momentum": g.probe.config.momentum,
                    "batch_size": g.probe.config.batch_size,
                    "growth": g.growth.to_dict() if g.growth else None,
                    "note": g.note,
                }
                for g in growths
            ],
        },
        "validity": {
            "ok": not any(
                flags[f]
                for f in (
                    "low_r2",
                    "not_linear",
                    "edge_unreachable",
                    "exponents_off",
                    "probe_diverged",
                )
            ),
            "flags": flags,
            "warnings": warnings,
        },
        "cost": cost or {},
        "seed": spec.seed,
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "device": str(device),
    }
    if spec.verify:
        result["verification"] = verify(
            spec, dataset, choice, y0, device=device, on_progress=on_progress
        )
    return result


def verify(
    spec: RecommendationSpec,
    dataset: Dataset,
    choice: Choice,
    y0: float,
    *,
    device: torch.device,
    on_progress: Callable[[ProbeProgress], bool] | None = None,
) -> dict[str, Any]:
    """Train the recommended configuration for its epochs; measured beside the prediction."""
    steps = max(1, round(choice.epochs * dataset.train_size / choice.batch_size))
    config = ProbeConfig(
        choice.learning_rate,
        choice.momentum,
        choice.weight_decay,
        choice.batch_size,
        spec.seed,
        steps,
    )
    (res,) = run_population(
        spec.model, dataset, [config], device=device, on_progress=on_progress, keep_params=True
    )
    kind = order_kind(spec)
    t, y = order_series(res.records, kind)
    predicted = fit.predict_trajectory(t, choice.growth, choice.decay_rate, y0)
    last_eval = next((r for r in reversed(res.records) if r.val_accuracy is not None), None)
    out: dict[str, Any] = {
        "outcome": res.outcome,
        "reason": res.reason,
        "seconds": res.seconds,
        "final_val_accuracy": last_eval.val_accuracy if last_eval else None,
        "final_val_loss": last_eval.val_loss if last_eval else None,
        "trajectory": {
            "epoch": t.tolist(),
            "measured": y.tolist(),
            "predicted": predicted.tolist(),
        },
    }
    if res.params is not None and res.outcome in ("completed", "stopped"):
        out.update(_evaluate(spec, dataset, res, device))
    return out
