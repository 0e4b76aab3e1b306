"""Probe results → fits → the typed recommendation (edgetune.schemas.Recommendation).

Each growth probe's series gives a growth rate A (after the initial transient, before the edge);
the rates across probes give the scaling law A = k·η^a·(1/B)^b·(1/(1−α))^c; the decay probe's bend
gives D and with it the decay coefficient; `law.choose_config` then solves for the free knobs.
Everything the fits doubted becomes a flag and a plain-language warning in `validity`; a run that
cannot be recommended still returns a Recommendation, with `hyperparameters` null and the reason.
Values in, values out: no torch training, no database.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from app.schemas import (
    AdamWKwargs,
    DecayFit,
    EdgeSummary,
    Estimate,
    GrowthFit,
    Hyperparameters,
    MLPSpec,
    OptimizerSpec,
    OrderKind,
    PluginModelSpec,
    ProbeGrowth,
    Recommendation,
    RecommendationSpec,
    SaturatingDecay,
    ScalingFit,
    ScheduleOut,
    SGDKwargs,
    TorchvisionSpec,
    Trajectory,
    Validity,
)
from edgetune.schedules import mean_multiplier
from worker import fit
from worker.law import (
    EDGE,
    Choice,
    choose_config,
    edge_epoch,
    effective_rate,
    knobs,
    momentum_free,
    order_description,
    order_kind,
    order_series,
    predict,
    run_schedule,
)
from worker.plan import PlannedProbe, best_probe_answers
from worker.probe import ADAMW_BETAS, ADAMW_EPS, ProbeConfig, ProbeResult

# Flags that make a recommendation doubtful (validity.ok false); the others only inform.
DOUBTFUL = (
    "low_r2",
    "not_linear",
    "edge_unreachable",
    "probe_diverged",
    # No growth law placed the answer: it is the better of the measured probe configurations.
    "no_growth_law",
    # A growth law was measured but no criterion says where the run should end (AdamW): the
    # answer is likewise the better of the measured probe configurations.
    "no_criterion",
    # Beyond what was measured: the answer is an extrapolation, so it cannot be "ok".
    "extrapolated",
    "outside_validated_regime",
)
# benchmarks/results/adamw_check_cpu.json and adamw_optimum_cpu.json.
ADAMW_NO_CRITERION = (
    "under AdamW no rule says where training should end: steered to reach the edge at the end "
    "of the budget, the paper model trained worse than AdamW's default at 20 epochs, the best "
    "AdamW runs of four cases ended anywhere from J 0.8 to 2.5, and the growth law AdamW follows "
    "(J² ∝ η^1.5 on the paper model) cannot place a run without such a rule"
)
# Below this the hidden layers pass (almost) no signal: nothing to measure a growth law on.
DEAD_ORDER = 1e-6
SATURATING_NOTE = (
    "weight_decay that holds the order parameter at the edge when training longer than the "
    "recommended epochs; the recommended run itself reaches the edge at its end without decay"
)


@dataclass(frozen=True)
class Decision:
    """The recommendation (without run provenance or verification), and what verifying it needs:
    the chosen configuration and where its predicted trajectory starts, the probes' fitted
    intercept (None: no recommendation)."""

    recommendation: Recommendation
    choice: Choice | None
    y0: float | None


@dataclass(frozen=True)
class MeasuredGrowth:
    probe: PlannedProbe
    result: ProbeResult
    y0: float
    growth: fit.GrowthFit | None
    note: str | None


@dataclass(frozen=True)
class DecayMeasurement:
    fitted: fit.DecayFit | None  # the last decay probe's fit
    probe: fit.Knobs | None  # the knobs of the last probe whose D came out positive
    coefficient: fit.Estimate | None  # c_D of that probe


def _measure_growth(probe: PlannedProbe, result: ProbeResult, kind: OrderKind) -> MeasuredGrowth:
    t, y = order_series(result.records, kind)
    y0 = float(y[0]) if len(y) else math.nan
    if result.outcome == "diverged":
        return MeasuredGrowth(probe, result, y0, None, f"diverged: {result.reason}")
    if y0 >= EDGE:
        return MeasuredGrowth(probe, result, y0, None, "chaotic from the start")
    # Fit the ordered part after the transient, detected in the series itself.
    try:
        t_min = fit.transient_end(t, y)
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


def _free_knobs(spec: RecommendationSpec) -> tuple[fit.Knob, ...]:
    opt = spec.optimizer
    free: list[fit.Knob] = []
    if opt.learning_rate is None:
        free.append("eta")
    if opt.batch_size is None:
        free.append("batch")
    if momentum_free(spec):
        free.append("momentum")
    return tuple(free)


def _validated_regime(spec: RecommendationSpec, kind: OrderKind) -> str | None:
    """Why the model lies outside the regime where the method was validated, or None."""
    model = spec.model
    if isinstance(model, TorchvisionSpec | PluginModelSpec):
        return (
            "torchvision and plugin models (BatchNorm, residual connections) are outside "
            "the regime where the scaling laws were validated; J² is only a proxy there"
        )
    if kind == "chi":
        return (
            "for convolutional networks no edge criterion has been validated yet: χ is steered "
            "to 1 by analogy with the MLPs (docs/science.md §6)"
        )
    if spec.optimizer.type == "adamw":
        # benchmarks/results/adamw_check_cpu.json (paper model, 20 epochs, 3 seeds); the last
        # clause: benchmarks/results/adamw_optimum_cpu.json.
        return (
            "under AdamW, reaching the edge at the end of the budget is not validated: on the "
            "paper model at 20 epochs it trained to 0.8799 against 0.8816 for AdamW's default "
            "(lr 1e-3, weight_decay 0.01), and the best of a 12-config grid (lr 3e-4) ended far "
            "past the edge, at J ≈ 2.5; on three other cases the best AdamW runs ended at J 0.8 "
            "to 1.8, so no J at the end marks AdamW's best run"
        )
    if spec.dataset.name not in ("fashion-mnist", "mnist"):
        return "the scaling laws were validated on Fashion-MNIST; other data is an extrapolation"
    return None


def _criterion_note(spec: RecommendationSpec) -> str | None:
    """Where the edge criterion rests on this project's measurements rather than the paper."""
    model = spec.model
    notes = []
    if isinstance(model, MLPSpec) and (len(model.hidden) > 1 or model.activation != "tanh"):
        notes.append(
            "for deeper or non-tanh MLPs, steering the fastest-growing layer's J to 1 at the end "
            "of the budget is an empirical rule from this project's grids (784-512-512 tanh on "
            "MNIST and ReLU on Fashion-MNIST, 10 epochs: the best configurations ended at "
            "J ≈ 0.97–1.02), not the paper's theory"
        )
    if spec.optimizer.type == "adamw":
        notes.append(
            "AdamW is outside the paper's theory: its growth law is this project's measurement "
            "(benchmarks/results/adamw_law_cpu.json: the paper model and a small CNN on "
            "Fashion-MNIST)"
        )
    return "; ".join(notes) or None


def _rate(config: ProbeConfig) -> float:
    return effective_rate(config.learning_rate, config.momentum, config.batch_size)


def _activation(spec: RecommendationSpec) -> str | None:
    model = spec.model
    return None if isinstance(model, TorchvisionSpec | PluginModelSpec) else model.activation


def initial_refusal(spec: RecommendationSpec, y0: float, *, normalised: bool) -> str | None:
    """Why no probe can help, judged on the untrained network (y0: its order parameter; normalised:
    it has BatchNorm layers), or None. Each reason is true for that kind of network, and its
    advice is a change the spec can express."""
    if normalised:
        return (
            "this network normalises its layers (BatchNorm): its function does not change with "
            "the scale of its weights, so the order parameter the growth law steers is a gauge "
            "here, and no law has been validated for such networks yet. No probes were run. For "
            "a recommendation, describe the network without normalisation (model.type: cnn or mlp)"
        )
    if not math.isfinite(y0) or y0 < DEAD_ORDER:
        return (
            f"the untrained network passes no signal through its hidden layers (order parameter "
            f"{y0:.2g}): there is no growth to measure. No probes were run. Initialise with a "
            "larger weight scale (model.init: {scheme: edge, J: 0.5}, or scheme: kaiming)"
        )
    if y0 < EDGE:
        return None
    if _activation(spec) == "tanh":
        return (
            f"the network starts chaotic (order parameter {y0:.2f} ≥ 1 at initialisation): "
            "training can only move it further from the edge. No probes were run. Initialise "
            "with a smaller weight scale (e.g. model.init: {scheme: edge, J: 0.5}) and ask again."
        )
    # Networks without a chaotic phase (ReLU family) that start at χ ≥ 1 are probed and answered
    # with the best probe (decide, `_at_the_boundary`): the usual Kaiming init puts them there.
    return None


def at_the_boundary_by_design(spec: RecommendationSpec) -> bool:
    """A ReLU network at Kaiming initialisation: χ = 1 in mean field, whatever one measurement
    says. Measured on one batch, χ at step 0 scatters by ±0.1–0.14 from one initialisation to
    the next on the suite's CNNs (mean 0.86 and 1.00; benchmarks/results/
    best_probe_choice_cpu.json), so comparing it with 1 sent the same spec down a different path
    from one seed to the next."""
    init = getattr(spec.model, "init", None)
    return _activation(spec) == "relu" and getattr(init, "scheme", "") == "kaiming"


def _at_the_boundary(spec: RecommendationSpec, y0: float) -> str:
    """Why no growth law places a network without a chaotic phase that starts at χ ≥ 1."""
    by_design = at_the_boundary_by_design(spec)
    measured = y0 >= EDGE or not by_design
    where = (
        f"the network starts at χ = {y0:.2f} ≥ 1, the boundary"
        if measured
        else (
            "kaiming initialisation starts this ReLU network at χ = 1 in mean field (measured "
            f"on one batch: {y0:.2f}; it scatters by about ±0.1 between initialisations), the "
            "boundary"
        )
    )
    return (
        f"{where} between vanishing and exploding gradients ({_activation(spec)} networks have "
        "no chaotic phase"
        + ("; kaiming initialisation puts them there by design" if by_design and measured else "")
        + "); the growth law steers χ up to 1 from below, so it cannot place this run. To have "
        "the law place it, start below the boundary (model.init: {scheme: edge, J: 1.0} gives "
        "χ ≈ 0.5 for ReLU)"
    )


def refusal(spec: RecommendationSpec, reason: str) -> Recommendation:
    """The answer when no configuration is recommended, with its reason."""
    return _no_recommendation(reason, order_kind(spec), []).recommendation


def _no_recommendation(reason: str, kind: OrderKind, warnings: list[str]) -> Decision:
    recommendation = Recommendation(
        hyperparameters=None,
        edge=EdgeSummary(order_parameter=order_description(kind)),
        validity=Validity(
            ok=False,
            reason=reason,
            flags={"no_recommendation": True},
            warnings=[reason, *warnings],
        ),
    )
    return Decision(recommendation, None, None)


def _fit_scaling(spec: RecommendationSpec, usable: list[MeasuredGrowth]) -> fit.ScalingFit:
    """The scaling law over the usable growth probes, in the knobs that are free and varied."""
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
    return fit.fit_scaling(
        [a.value for a in a_est],
        [c.learning_rate for c in cfgs],
        [c.batch_size for c in cfgs],
        [c.momentum for c in cfgs],
        # With no residual degrees of freedom the slopes' own errors are all there is.
        A_se=[max(a.se, 1e-3 * a.value) for a in a_est] if len(a_est) <= n_params else None,
        free=free,
    )


def _fit_decay(
    plan: list[PlannedProbe],
    results: Mapping[str, ProbeResult],
    kind: OrderKind,
    scaling: fit.ScalingFit,
    warnings: list[str],
) -> DecayMeasurement:
    """Fit the bend of each decay probe, with A from its no-decay twin (the scaling law)."""
    decay_fit: fit.DecayFit | None = None
    decay_probe: fit.Knobs | None = None
    c_est: fit.Estimate | None = None
    for p in plan:
        if p.purpose != "decay" or p.key not in results:
            continue
        cfg = p.config
        knobs_ = fit.Knobs(cfg.learning_rate, cfg.momentum, cfg.batch_size, cfg.weight_decay)
        a_twin = scaling.predict_A(cfg.learning_rate, cfg.batch_size, cfg.momentum, theory=True)
        t, y = order_series(results[p.key].records, kind)
        try:
            decay_fit = fit.fit_decay(t, y, A=a_twin.value, t_min=fit.transient_end(t, y))
        except fit.FitError as exc:
            warnings.append(f"decay probe {p.key}: {exc}")
            continue
        warnings.extend(f"decay probe {p.key}: {w}" for w in decay_fit.warnings)
        if decay_fit.D.value > 0:
            decay_probe = knobs_
            c_est = fit.decay_coefficient(decay_fit.D, knobs_)
    return DecayMeasurement(decay_fit, decay_probe, c_est)


def _batch_candidates(
    spec: RecommendationSpec,
    usable: list[MeasuredGrowth],
    scaling: fit.ScalingFit,
    warnings: list[str],
) -> list[int]:
    """Batch sizes over which the collapse in η/B held in the probes (largest preferred)."""
    _, batch0 = knobs(spec)
    big = [g for g in usable if g.probe.group == 1]
    if spec.optimizer.batch_size is None and big:
        b_exp = scaling.exponent("batch")
        if b_exp.fitted and b_exp.value.contains(1.0) or abs(b_exp.value.value - 1) < 0.15:
            return [batch0, 2 * batch0, 4 * batch0]
        warnings.append(
            f"growth did not scale as 1/B (exponent {b_exp.value.value:.2f}); "
            f"keeping batch size {batch0}"
        )
    return [batch0]


def _range_flags(
    spec: RecommendationSpec,
    plan: list[PlannedProbe],
    usable: list[MeasuredGrowth],
    choice: Choice,
    flags: dict[str, bool],
    warnings: list[str],
) -> None:
    """Flags (and warnings) for a recommendation outside what the probes measured."""
    low, high = _bracket(usable)
    run_eff = effective_rate(choice.learning_rate, choice.momentum, choice.batch_size)
    # A free learning rate was already brought inside (_within_probes); a fixed one may not be.
    outside = not low * (1 - 1e-9) <= run_eff <= high * (1 + 1e-9)
    flags["extrapolated"] = flags.get("extrapolated", False) or outside
    if outside:
        warnings.append(
            f"the recommended η/((1−α)B) = {run_eff:.3g} lies outside the probed "
            f"range [{low:.3g}, {high:.3g}]"
        )
    # Each probe should measure at least as long after its transient as the transient lasted.
    short = [g for g in usable if g.growth and g.growth.t_end - g.growth.t_start < g.growth.t_start]
    flags["short_probes"] = bool(short)
    if short:
        warnings.append(
            f"{len(short)} probe(s) ended soon after their initial transient (probe budget): the "
            "slope is measured over a short window; raise budget.probe_fraction for a more "
            "reliable result"
        )
    regime = _validated_regime(spec, order_kind(spec))
    flags["outside_validated_regime"] = regime is not None
    warnings.extend(note for note in (regime, _criterion_note(spec)) if note)


def _bracket(usable: list[MeasuredGrowth]) -> tuple[float, float]:
    """The effective rates η/((1−α)B) the usable growth probes measured: lowest, highest."""
    rates = [_rate(g.probe.config) for g in usable]
    return min(rates), max(rates)


def _within_probes(
    spec: RecommendationSpec,
    choice: Choice,
    usable: list[MeasuredGrowth],
    law: Callable[[float, float, float], float],
    flags: dict[str, bool],
    warnings: list[str],
) -> Choice:
    """A free learning rate the law puts outside the probed bracket is brought back to its
    nearest edge: the best-supported configuration the probes measured, never an extrapolation
    (flagged `extrapolated`, so never ok)."""
    low, high = _bracket(usable)
    run = effective_rate(choice.learning_rate, choice.momentum, choice.batch_size)
    if spec.optimizer.learning_rate is not None or low * (1 - 1e-9) <= run <= high * (1 + 1e-9):
        return choice
    bound = low if run < low else high
    eta = bound * (1 - choice.momentum) * choice.batch_size
    flags["extrapolated"] = True
    warnings.append(
        f"the growth law asked for η = {choice.learning_rate:.3g} (η/((1−α)B) = {run:.3g}), "
        f"outside what the probes measured [{low:.3g}, {high:.3g}]; recommending the nearest "
        f"measured rate, η = {eta:.3g}, instead of extrapolating"
    )
    return replace(
        choice,
        learning_rate=eta,
        growth=law(eta, choice.momentum, choice.batch_size),
        decay_rate=choice.decay_rate * eta / choice.learning_rate,  # D ∝ η as well
    )


def _schedule(choice: Choice, train_size: int) -> ScheduleOut:
    per_epoch = max(1, train_size // choice.batch_size)
    return ScheduleOut(
        name=choice.schedule,
        warmup_epochs=choice.warmup_epochs,
        steps_per_epoch=per_epoch,
        total_steps=round(choice.epochs * per_epoch),
        mean_multiplier=mean_multiplier(choice.schedule, choice.epochs, choice.warmup_epochs),
    )


def _hyperparameters(choice: Choice, train_size: int, opt: OptimizerSpec) -> Hyperparameters:
    adamw = opt.type == "adamw"
    return Hyperparameters(
        optimizer=opt.type,
        learning_rate=choice.learning_rate,
        momentum=choice.momentum,
        batch_size=choice.batch_size,
        weight_decay=choice.weight_decay,
        epochs=choice.epochs,
        paper_lambda=choice.weight_decay / 2,
        effective_rate=effective_rate(choice.learning_rate, choice.momentum, choice.batch_size),
        torch_sgd_kwargs=None
        if adamw
        else SGDKwargs(
            lr=choice.learning_rate,
            momentum=choice.momentum,
            weight_decay=choice.weight_decay,
            nesterov=opt.nesterov,
        ),
        torch_adamw_kwargs=AdamWKwargs(
            lr=choice.learning_rate,
            betas=ADAMW_BETAS,
            eps=ADAMW_EPS,
            weight_decay=choice.weight_decay,
        )
        if adamw
        else None,
        schedule=_schedule(choice, train_size),
    )


def _probe_growth(g: MeasuredGrowth) -> ProbeGrowth:
    cfg = g.probe.config
    return ProbeGrowth(
        key=g.probe.key,
        learning_rate=cfg.learning_rate,
        momentum=cfg.momentum,
        batch_size=cfg.batch_size,
        effective_rate=_rate(cfg),
        growth=GrowthFit.model_validate(g.growth.to_dict()) if g.growth else None,
        note=g.note,
    )


def _saturating(
    decay: DecayMeasurement, a_run: fit.Estimate, choice: Choice
) -> SaturatingDecay | None:
    """The decay whose equilibrium A/D sits at the edge: for training beyond the budget
    (science.md §4 step 3); independent of η, α and B under the growth law."""
    if decay.fitted is None or decay.probe is None:
        return None
    run = fit.Knobs(choice.learning_rate, choice.momentum, choice.batch_size, choice.weight_decay)
    edge_decay = fit.edge_weight_decay(a_run, decay.fitted.D, probe=decay.probe, run=run)
    return SaturatingDecay.model_validate({**edge_decay.to_dict(), "note": SATURATING_NOTE})


def _edge_summary(
    kind: OrderKind,
    y0: float,
    choice: Choice,
    law: AnswerLaw,
    scaling: fit.ScalingFit,
    decay: DecayMeasurement,
    growths: list[MeasuredGrowth],
) -> EdgeSummary:
    a_run = law.predict(choice.learning_rate, choice.momentum, choice.batch_size)
    t_pred, y_pred = predict(choice, y0)
    return EdgeSummary(
        order_parameter=order_description(kind),
        initial=y0,
        predicted_edge_epoch=edge_epoch(choice, y0),
        predicted_final=float(y_pred[-1]),
        predicted_trajectory=Trajectory(epoch=t_pred.tolist(), value=y_pred.tolist()),
        growth_rate_per_epoch=Estimate.model_validate(a_run.to_dict()),
        decay_rate_per_epoch=choice.decay_rate,
        k=Estimate.model_validate(law.k.to_dict()),
        growth_law=law.description,
        scaling=ScalingFit.model_validate(scaling.to_dict()),
        decay_fit=DecayFit.model_validate(decay.fitted.to_dict()) if decay.fitted else None,
        decay_coefficient=Estimate.model_validate(decay.coefficient.to_dict())
        if decay.coefficient
        else None,
        saturating_weight_decay=_saturating(decay, a_run, choice),
        probes=[_probe_growth(g) for g in growths],
    )


def _growth_probes(
    plan: list[PlannedProbe], results: Mapping[str, ProbeResult], kind: OrderKind
) -> tuple[list[MeasuredGrowth], list[str]]:
    """Every finished growth probe's fit, and a warning for each one left out of the fits."""
    growths = [
        _measure_growth(p, results[p.key], kind)
        for p in plan
        if p.purpose == "growth" and p.key in results
    ]
    warnings = [
        f"probe {g.probe.key} (η={g.probe.config.learning_rate:.3g}, "
        f"α={g.probe.config.momentum:g}, B={g.probe.config.batch_size}): {g.note}"
        for g in growths
        if g.note
    ]
    return growths, warnings


# The knob `law.choose_config` solves for (the first free one), in words: (name, its knob, what
# rises with it).
_SOLVED_KNOB: tuple[tuple[str, fit.Knob, str], ...] = (
    ("learning rate", "eta", "η"),
    ("batch size", "batch", "1/B"),
    ("momentum", "momentum", "1/(1−α)"),
)


def _unsolvable(
    spec: RecommendationSpec, scaling: fit.ScalingFit, usable: list[MeasuredGrowth], y0: float
) -> str | None:
    """Why the fitted growth law cannot be solved for the knob the recommendation sets, or None.

    The solve assumes that A grows with that knob (the theory: A ∝ η/((1−α)B)). A fitted exponent
    ≤ 0 turns it around: the bisection then runs to the end of its range (η = 1e-9) and the law,
    extrapolated there, predicts absurd growth (F7: 4e16 per epoch and an overflow).
    """
    free = _free_knobs(spec)
    solved = next((k for k in _SOLVED_KNOB if k[1] in free), None)
    if solved is None:
        return None
    name, knob, symbol = solved
    exponent = scaling.exponent(knob)
    if not exponent.fitted or exponent.value.value > 0:
        return None
    v = exponent.value
    fastest = max(g.growth.A.value for g in usable if g.growth)
    return (
        f"the order parameter's growth rate does not rise with {symbol} across the probes "
        f"(fitted exponent {v.value:.2f}, 95% interval [{v.low:.2f}, {v.high:.2f}]; the theory's "
        f"is 1), so no {name} brings it to the edge within the budget: the growth law does not "
        f"hold for this model and data. The fastest probe grew it by {fastest:.2g} per epoch "
        f"from {y0:.2f}: at that rate the edge is {(EDGE - y0) / fastest:.3g} epochs away."
    )


def _theory_exponents(scaling: fit.ScalingFit) -> bool:
    """Whether the answer uses theory's exponents (k_theory) rather than the fitted power law:
    only where the probes over-determine the law (residual dof > 0) and agree with theory.

    With two growth probes the fitted law passes through both. At twice the lower one's rate,
    the middle of the bracket where answers land, it predicted a third probe's growth to within
    0.035–0.11 in log A on four MLP families, where theory's exponent missed by 0.14–0.29
    (benchmarks/results/exponent_uncertainty_cpu.json, 20 seeds each). The fifth case went the
    other way: the 3-epoch 10k subset, whose upper probe bends upward (fitted 0.47 too high,
    theory 0.12 too low); its fitted exponent excludes 1 anyway.
    """
    return scaling.theory_consistent and scaling.dof > 0


def _exponent_flags(scaling: fit.ScalingFit, flags: dict[str, bool], warnings: list[str]) -> None:
    warnings.extend(scaling.warnings)
    flags["exponents_off"] = not scaling.theory_consistent
    if not scaling.theory_consistent:
        # Informational, not doubtful: the answer then interpolates the fitted power law between
        # the probes that bracket it (outside the bracket it is clamped and flagged
        # `extrapolated`), so it rests on what was measured either way.
        warnings.append(
            "a fitted exponent's 95% interval excludes the theory's 1: the collapse "
            "in η/((1−α)B) is only approximate for this model; the learning rate is "
            "interpolated between the probes with the fitted exponents"
        )


@dataclass(frozen=True)
class AnswerLaw:
    """The growth law the answer is solved with: (η, α, B) → A per epoch with its interval, how
    a schedule's multiplier enters it (A ∝ m^a), what it is in words, and the k of
    A = k·η/((1−α)B) it stands for (the line the plots draw)."""

    predict: Callable[[float, float, float], fit.Estimate]
    rate_exponent: float
    description: str
    k: fit.Estimate


def answer_law(
    spec: RecommendationSpec,
    scaling: fit.ScalingFit,
    usable: list[MeasuredGrowth],
    warnings: list[str],
) -> AnswerLaw:
    """Theory's exponents where the probes over-determine the law and agree with it; else the
    fitted power law through the probes; except that under SGD an η exponent above 1 is read
    as theory's A ∝ η/((1−α)B) through the slower probe.

    Why the exception: the faster probe's slope holds more early growth. Its intercept sits
    higher (0.287 against 0.271 on the paper model at 20 epochs) and its k = A/(η/((1−α)B))
    came out 1.2–1.8× the slower one's on five MLP cases. Over their whole budget the recommended
    runs then grew at a k close to the slower probe's, not the chord's: on the paper model 10.5,
    9.9, 10.0 and 10.7 (20 epochs constant; 20, 60 and 10 epochs warmup-cosine) against the
    slower probe's 10.5, 10.6, 9.3 and 11.9 and the chord's 11.6, 11.7, 9.8 and 14.8; on the deep
    tanh and ReLU MLPs 13.8 and 18.5 against 18.9 and 21.6, chord 21.8 and 23.8
    (benchmarks/results/suite.json's edge_landing, schedule_check_cpu.json). The chord does
    predict a third probe's slope at equal τ (`_theory_exponents`); what it overstates is how
    fast the long run keeps growing once the transient is over."""
    theory = _theory_exponents(scaling)

    def fitted(eta: float, alpha: float, batch: float) -> fit.Estimate:
        return scaling.predict_A(eta, batch, alpha, theory=theory)

    eta = scaling.exponent("eta")
    if theory:
        return AnswerLaw(
            fitted,
            1.0,
            "A = k·η/((1−α)B) (theory's exponents; the probes agree)",
            scaling.k_theory,
        )
    chord = AnswerLaw(
        fitted,
        eta.value.value if eta.fitted else 1.0,
        "A = k·η^a·(1/B)^b·(1/(1−α))^c with the fitted exponents, interpolated between the probes",
        scaling.k_theory,
    )
    if spec.optimizer.type != "sgd" or not eta.fitted or eta.value.value <= 1:
        return chord
    slow = min(usable, key=lambda g: effective_rate(*_knobs_of(g)))
    assert slow.growth is not None  # usable probes have a growth fit
    a_slow, x_slow = slow.growth.A, effective_rate(*_knobs_of(slow))

    def through_slow(eta: float, alpha: float, batch: float) -> fit.Estimate:
        r = effective_rate(eta, alpha, batch) / x_slow
        return fit.Estimate(a_slow.value * r, a_slow.se * r, a_slow.low * r, a_slow.high * r)

    warnings.append(
        f"the probes' growth rises like η^{eta.value.value:.2f}, faster than theory's η^1: the "
        "faster probe's slope holds more of the early transient, so the learning rate is set "
        f"from the slower probe's k = {a_slow.value / x_slow:.3g} with theory's A ∝ η/((1−α)B)"
    )
    return AnswerLaw(
        through_slow,
        1.0,
        "A = k·η/((1−α)B) with k from the slower probe (the probes' η exponent "
        f"{eta.value.value:.2f} > 1 is the faster probe's transient)",
        through_slow(1.0, 0.0, 1.0),  # A at η/((1−α)B) = 1: k itself
    )


def _knobs_of(g: MeasuredGrowth) -> tuple[float, float, int]:
    c = g.probe.config
    return c.learning_rate, c.momentum, c.batch_size


def decide(
    spec: RecommendationSpec,
    plan: list[PlannedProbe],
    results: Mapping[str, ProbeResult],
    *,
    train_size: int,
) -> Decision:
    """Fit the probes and solve for the recommended configuration."""
    kind = order_kind(spec)
    growths, warnings = _growth_probes(plan, results, kind)
    flags = {"probe_diverged": any(g.result.outcome == "diverged" for g in growths)}
    y0s = [g.y0 for g in growths if math.isfinite(g.y0)]
    if not y0s:
        return _no_recommendation("no probe produced a measurement", kind, warnings)
    y0 = float(np.median(y0s))
    if y0 >= EDGE or at_the_boundary_by_design(spec):
        return _past_the_edge(spec, growths, kind, y0, warnings, train_size)
    if best_probe_answers(spec):
        return _best_measured(
            spec, growths, kind, y0, ADAMW_NO_CRITERION, warnings, train_size, criterion=True
        )
    usable = [g for g in growths if g.growth is not None and g.growth.A.value > 0]
    if not usable:
        reason = "no probe showed measurable growth of the order parameter in the ordered phase"
        return _best_measured(spec, growths, kind, y0, reason, warnings, train_size)
    fits = [g.growth for g in usable if g.growth]
    for g, f in zip(usable, fits, strict=True):
        warnings.extend(f"probe {g.probe.key}: {w}" for w in f.warnings)
    flags["low_r2"] = any((f.r2 or 0) < 0.98 for f in fits)
    flags["not_linear"] = any(not f.linear for f in fits)
    try:
        scaling = _fit_scaling(spec, usable)
    except fit.FitError as exc:
        return _no_recommendation(f"the scaling fit failed: {exc}", kind, warnings)
    _exponent_flags(scaling, flags, warnings)
    theory = _theory_exponents(scaling)
    unsolvable = None if theory else _unsolvable(spec, scaling, usable, y0)
    if unsolvable:
        return _best_measured(spec, growths, kind, y0, unsolvable, warnings, train_size)
    decay = _fit_decay(plan, results, kind, scaling, warnings)
    candidates = _batch_candidates(spec, usable, scaling, warnings)

    law = answer_law(spec, scaling, usable, warnings)

    def growth_law(eta: float, alpha: float, batch: float) -> float:
        return law.predict(eta, alpha, batch).value

    y_start = _start(usable, y0)
    choice = choose_config(
        spec,
        k=scaling.k_theory.value,
        c=decay.coefficient.value if decay.coefficient else None,
        y0=y_start,
        train_size=train_size,
        batch_candidates=candidates,
        growth_law=growth_law,
        rate_exponent=law.rate_exponent,
    )
    warnings.extend(choice.warnings)
    choice = _within_probes(spec, choice, usable, growth_law, flags, warnings)
    t_edge = edge_epoch(choice, y_start)
    # A capped rate stops short of the edge by the rule itself (law.MAX_EFFECTIVE_STEP), not
    # because the law failed: said by its own flag.
    flags["rate_capped"] = choice.capped
    flags["edge_unreachable"] = not choice.capped and (
        t_edge is None or t_edge > choice.epochs * 1.05
    )
    _range_flags(spec, plan, usable, choice, flags, warnings)
    edge = _edge_summary(kind, y_start, choice, law, scaling, decay, growths)
    recommendation = Recommendation(
        hyperparameters=_hyperparameters(choice, train_size, spec.optimizer),
        edge=edge.model_copy(update={"initial": y0}),
        validity=Validity(
            ok=not any(flags.get(f) for f in DOUBTFUL), flags=flags, warnings=warnings
        ),
    )
    return Decision(recommendation, choice, y_start)


def _past_the_edge(
    spec: RecommendationSpec,
    growths: list[MeasuredGrowth],
    kind: OrderKind,
    y0: float,
    warnings: list[str],
    train_size: int,
) -> Decision:
    """A network measured at or past its edge at step 0, or a ReLU network at Kaiming init (at
    the boundary by design): the best probe where it has no chaotic phase (ReLU family), no
    answer where it is chaotic."""
    if _activation(spec) not in ("tanh", None):
        reason = _at_the_boundary(spec, y0)
        return _best_measured(spec, growths, kind, y0, reason, warnings, train_size)
    return _no_recommendation(
        f"the network starts chaotic (order parameter {y0:.2f} ≥ 1 at initialisation): "
        "training can only move it further from the edge. Initialise with a smaller "
        "weight scale (e.g. init: {scheme: edge, J: 0.5}) and ask again.",
        kind,
        warnings,
    )


def _final_val_loss(g: MeasuredGrowth) -> float:
    losses = [r.val_loss for r in g.result.records if r.val_loss is not None]
    return losses[-1] if losses and g.result.outcome == "completed" else math.inf


def _val_loss_at(g: MeasuredGrowth, samples: int) -> float | None:
    """The probe's validation loss after `samples` training examples, where it was evaluated."""
    batch = g.probe.config.batch_size
    at = [
        r.val_loss for r in g.result.records if r.step * batch == samples and r.val_loss is not None
    ]
    return at[-1] if at else None


def _losses_at_equal_samples(ran: list[MeasuredGrowth]) -> tuple[list[float], int | None]:
    """Each probe's validation loss after as many training examples as the shortest one saw.

    The budget fixes examples, not τ: at equal τ the slower probe has seen 4× the examples of
    the faster one, so the comparison chooses the lower rate by construction (on digits the
    CNN's probes ranked 10 of 10 seeds the other way round at equal examples, and the faster
    one's answer trained 0.46 points better, benchmarks/results/best_probe_choice_cpu.json).
    A population evaluates every live member where one of them ends, so this costs nothing.
    Short horizons favour lower rates if anything (Wu et al. 1803.02021). Where a probe holds
    no evaluation at that point (a different population), each probe's last loss is used."""
    common = min(g.result.steps_done * g.probe.config.batch_size for g in ran)
    at = [_val_loss_at(g, common) for g in ran]
    if all(v is not None for v in at):
        return [float(v) for v in at if v is not None], common
    return [_final_val_loss(g) for g in ran], None


def _best_measured(
    spec: RecommendationSpec,
    growths: list[MeasuredGrowth],
    kind: OrderKind,
    y0: float,
    reason: str,
    warnings: list[str],
    train_size: int,
    *,
    criterion: bool = False,
) -> Decision:
    """No growth law places the run, or (`criterion`) one was measured but nothing says where the
    run should end: the best-supported configuration is the measured probe with the lowest
    validation loss after the same number of training examples (ties and missing validation go
    to the lower rate, farther from the stability limit). Never an extrapolation, never ok, and
    the reason says why."""
    ran = [g for g in growths if g.result.outcome == "completed"]
    if not ran:
        return _no_recommendation(reason, kind, warnings)
    losses, samples = _losses_at_equal_samples(ran)
    i = min(range(len(ran)), key=lambda i: (losses[i], _rate(ran[i].probe.config)))
    loss, best = losses[i], ran[i]
    cfg = best.probe.config
    schedule, warmup = run_schedule(spec)
    # Under a schedule, the peak whose mean rate is the probe's (the same integral of the rate).
    mean = mean_multiplier(schedule, spec.budget.epochs, warmup)
    choice = Choice(
        cfg.learning_rate / mean,
        cfg.momentum,
        cfg.batch_size,
        cfg.weight_decay,
        spec.budget.epochs,
        0.0,
        0.0,
        (),
        schedule,
        warmup,
    )
    when = (
        f" after the same {samples} training examples as the others"
        if samples is not None
        else " at the end of its probe"
    )
    why = (
        ""
        if criterion
        else ". No growth law places this run (when it reaches the edge cannot be predicted)"
    )
    said = (
        f"{reason}{why}, so the recommendation is the measured probe "
        f"configuration {best.probe.key} (η = {cfg.learning_rate:.3g}) with the lowest "
        + (f"validation loss ({loss:.3g}){when}" if math.isfinite(loss) else "rate")
    )
    regime = _validated_regime(spec, kind)
    recommendation = Recommendation(
        hyperparameters=_hyperparameters(choice, train_size, spec.optimizer),
        edge=EdgeSummary(
            order_parameter=order_description(kind),
            initial=y0,
            probes=[_probe_growth(g) for g in growths],
        ),
        validity=Validity(
            ok=False,
            reason=said,
            flags={
                "no_criterion" if criterion else "no_growth_law": True,
                "edge_unreachable": not criterion,
                "extrapolated": False,  # a configuration a probe measured
                "outside_validated_regime": regime is not None,
                "probe_diverged": len(ran) < len(growths),
            },
            warnings=[said, *warnings, *([regime] if regime else [])],
        ),
    )
    # Verifiable like any answer: the prediction is "no growth" from y0, which says as much.
    return Decision(recommendation, choice, y0)


def _start(usable: list[MeasuredGrowth], y0: float) -> float:
    """Where the predicted trajectory starts: the probes' fitted intercept (median), so the jump
    of the initial transient is counted (it ends at the same τ in the recommended run), or the
    measured y0 where the intercepts make no sense."""
    intercepts = [g.growth.y0.value for g in usable if g.growth]
    y_start = float(np.median(intercepts)) if intercepts else y0
    return y_start if 0 <= y_start < EDGE else y0
