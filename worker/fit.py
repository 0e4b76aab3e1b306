"""Fits of the order-parameter dynamics with 95 % confidence intervals (numpy/scipy only, no torch).

The order parameter y is J² for the paper's single tanh layer or χ for general nets; the fits do
not care which. The laws (shared/docs/science.md §3–4), t in epochs:

- growth, no decay, ordered phase:  y(t) = y0 + A·t
- scaling of the growth rate:       A = k·η^a·(1/B)^b·(1/(1−α))^c, theory a = b = c = 1
- with weight decay:                dy/dt = A − D·y  ⇒  y(t) = A/D + (y0 − A/D)·e^(−D·t)
- scaling of the decay rate:        D = c_D·wd·η/((1−α)·B), wd = PyTorch `weight_decay` (= 2λ)

Every interval is a 95 % interval, from Student t quantiles with the residual degrees of freedom
or, for a growth rate, from a block bootstrap of the residuals' increments; the noise level is
estimated from the residuals (not trusted from the caller), so an under- or
over-stated measurement error cannot make an interval overconfident by itself. Results are frozen
dataclasses of plain floats; `to_dict()` gives JSON-safe values (±inf and NaN become None, which
for an interval end means "unbounded"). Bad input raises `FitError` with a message naming the
problem; a fit that works but should not be trusted carries flags and plain-language warnings.
"""

from __future__ import annotations

import math
import warnings as _warnings
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Literal

import numpy as np
from scipy import optimize, stats

from edgetune.schemas import EDGE

CI_LEVEL = 0.95
_Z = float(stats.norm.ppf(0.5 + CI_LEVEL / 2))  # the bootstrap's interval: value ± _Z·se
Knob = Literal["eta", "batch", "momentum"]
# How fit_growth's slope interval is made: "lag1" shrinks the degrees of freedom by the residuals'
# lag-1 autocorrelation; "bootstrap" resamples the residuals' increments (`slope_bootstrap`).
Uncertainty = Literal["lag1", "bootstrap"]
KNOBS: tuple[Knob, ...] = ("eta", "batch", "momentum")
_KNOB_LABEL = {"eta": "η", "batch": "1/B", "momentum": "1/(1−α)"}
# The autocorrelation correction is capped: a lag-1 correlation near 1 means the series is a
# random walk around the line, and the effective number of points would vanish.
_MAX_LAG1 = 0.9
# The largest x with a finite e^x: past it math.exp raises OverflowError instead of giving inf.
_MAX_EXP = math.log(np.finfo(float).max)


class FitError(ValueError):
    """The input cannot be fitted (too few points, no spread, wrong shapes, bad values)."""


def _jsonable(value: object) -> object:
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list | np.ndarray):
        return [_jsonable(v) for v in value]
    raise TypeError(f"cannot serialise {type(value).__name__}")


@dataclass(frozen=True)
class _Result:
    def to_dict(self) -> dict[str, object]:
        """JSON-safe: floats stay floats, ±inf and NaN become None, tuples become lists."""
        out = _jsonable(self)
        assert isinstance(out, dict)
        return out


@dataclass(frozen=True)
class Estimate(_Result):
    """A fitted value with its standard error and 95 % interval [low, high] (±inf = unbounded)."""

    value: float
    se: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def relative_half_width(self) -> float:
        """Half-width over |value|; inf when the value is 0."""
        return self.half_width / abs(self.value) if self.value != 0 else math.inf

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    @staticmethod
    def exact(value: float) -> Estimate:
        """A value taken as known (a fixed knob's assumed exponent, a given growth rate)."""
        return Estimate(float(value), 0.0, float(value), float(value))


def _normal_estimate(value: float, se: float, q: float) -> Estimate:
    return Estimate(float(value), float(se), float(value - q * se), float(value + q * se))


def _t_quantile(dof: float) -> float:
    return float(stats.t.ppf(0.5 + CI_LEVEL / 2, dof))


def _lag1(resid: np.ndarray, n_params: int) -> float:
    """Lag-1 autocorrelation of least-squares residuals (in time order), corrected for bias.

    The plain estimate is biased low by ≈ (p + (2p+1)·ρ)/n for residuals of a polynomial with p
    coefficients (Marriott & Pope 1954 for p = 1; p = 2, 3 checked by simulation), enough to
    undercover a trend's interval by several points at n ≈ 30. First-order inversion of that bias;
    left uncorrected for very short series where it is unreliable.
    """
    n = resid.size
    raw = float(np.sum(resid[1:] * resid[:-1]) / np.sum(resid * resid))
    if n < 4 * n_params + 2:
        return raw
    return min(1.0, (raw + n_params / n) / (1 - (2 * n_params + 1) / n))


def _effective_dof(n: int, lag1: float | None, n_params: int) -> float:
    """Residual degrees of freedom, reduced for positively correlated residuals.

    SGD noise wanders: consecutive measurements of y are not independent, and ordinary least
    squares would then understate the errors. Santer et al. (2000, J. Geophys. Res. 105, 7337)
    for trends in autocorrelated series: n_eff = n·(1−ρ)/(1+ρ), ρ the residuals' lag-1
    autocorrelation; the noise variance is the residual sum of squares over n_eff − p and the
    quantile is Student t with n_eff − p degrees of freedom (at least 1). Assumes evenly spaced
    measurements; with independent noise ρ ≈ 0 and this is ordinary least squares.
    """
    if lag1 is None or lag1 <= 0:
        return float(n - n_params)
    rho = min(lag1, _MAX_LAG1)
    return max(n * (1 - rho) / (1 + rho) - n_params, 1.0)


def _as_series(t: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    t_arr = np.asarray(t, dtype=float)
    y_arr = np.asarray(y, dtype=float)
    if t_arr.ndim != 1 or y_arr.ndim != 1 or t_arr.shape != y_arr.shape:
        raise FitError(
            f"t and y must be 1-D arrays of equal length (got shapes {t_arr.shape}, {y_arr.shape})"
        )
    return t_arr, y_arr


def _window(
    t: np.ndarray, y: np.ndarray, t_min: float | None, t_max: float | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Finite points with t_min ≤ t ≤ t_max, sorted by t; also the number of non-finite points."""
    finite = np.isfinite(t) & np.isfinite(y)
    keep = finite.copy()
    if t_min is not None:
        keep &= t >= t_min
    if t_max is not None:
        keep &= t <= t_max
    order = np.argsort(t[keep], kind="stable")
    return t[keep][order], y[keep][order], int((~finite).sum())


def _r2(y: np.ndarray, ssr: float, w: np.ndarray | None = None) -> float | None:
    w = np.ones_like(y) if w is None else w
    mean = float(np.sum(w * y) / np.sum(w))
    sst = float(np.sum(w * (y - mean) ** 2))
    # Rounding leaves ~1e-32 of "spread" in a constant series: treat it as none.
    return None if sst <= 1e-24 * float(np.sum(w * y * y)) else 1.0 - ssr / sst


# ---------------------------------------------------------------------------------------------
# Growth: y = y0 + A·t


@dataclass(frozen=True)
class GrowthFit(_Result):
    """Linear growth y = y0 + A·t over the fitted window [t_start, t_end] (epochs).

    `linear` is False when a quadratic term is both significant (p < 0.01) and large: the slope
    changes by more than `max_slope_change` (a fraction of the mean slope) across the window.
    `chaotic`: the window starts at or above the edge, where the growth law does not apply.
    `crossed_edge`: the series reached the edge inside the window; points from there on are left
    out of the fit (past the edge growth is sub-linear, science.md §3).
    """

    A: Estimate
    y0: Estimate  # intercept at t = 0
    r2: float | None  # None when y has no spread
    n: int
    t_start: float
    t_end: float
    slope_change: float | None  # (slope at t_end − slope at t_start)/|A|, from the quadratic fit
    curvature_p: float | None  # two-sided p of the quadratic term; None for an exact fit
    lag1: float | None  # residuals' lag-1 autocorrelation, bias-corrected (> 0 widens the CIs)
    linear: bool
    chaotic: bool
    crossed_edge: bool
    warnings: tuple[str, ...] = field(default=())


def fit_growth(
    t: object,
    y: object,
    *,
    t_min: float | None = None,
    t_max: float | None = None,
    edge: float | None = EDGE,
    min_r2: float = 0.98,
    max_slope_change: float = 0.25,
    uncertainty: Uncertainty = "bootstrap",
) -> GrowthFit:
    """Least-squares line y = y0 + A·t over t_min ≤ t ≤ t_max (pass t_min = 1 to skip epoch 1's
    fast transient, science.md §3).

    Errors of A: by default ("bootstrap") a moving-block bootstrap of the residuals' increments
    (`slope_bootstrap`): SGD noise wanders like a random walk around the line, which a
    stationary model of the residuals misses. Checked against seed replicates of real probes
    (benchmarks/results/exponent_uncertainty_cpu.json). "lag1" instead shrinks the degrees of
    freedom to an effective number of independent points from the residuals' lag-1
    autocorrelation (`_effective_dof`): cheap (the probes' stop rule asks it at every
    measurement), and it undercovers when independent noise rides on the wander. y0's interval
    is the lag-1 one either way.
    Non-finite points are dropped (a diverged probe); with `edge` set, the fit stops at the first
    point with y ≥ edge unless the window already starts there (then `chaotic`, all points kept).
    Raises FitError with fewer than 4 usable points or no spread in t.
    """
    t_arr, y_arr = _as_series(t, y)
    tw, yw, chaotic, crossed = _growth_window(t_arr, y_arr, t_min, t_max, edge)
    n = int(tw.size)
    t_mean = float(tw.mean())
    tc = tw - t_mean
    sxx = float(np.sum(tc * tc))
    slope = float(np.sum(tc * yw) / sxx)
    intercept = float(yw.mean() - slope * t_mean)
    resid = yw - (intercept + slope * tw)
    ssr = float(np.sum(resid * resid))
    ss_res_scale = float(np.sum(yw * yw)) * 1e-24  # below this the residuals are rounding only
    lag1 = _lag1(resid, 2) if ssr > ss_res_scale else None
    dof = _effective_dof(n, lag1, 2)
    s2 = ssr / dof
    q = _t_quantile(dof)
    A = _normal_estimate(slope, math.sqrt(s2 / sxx), q)
    if uncertainty == "bootstrap" and ssr > ss_res_scale:
        A = _normal_estimate(slope, float(np.std(slope_bootstrap(tw, resid))), _Z)
    y0 = _normal_estimate(intercept, math.sqrt(s2 * (1 / n + t_mean**2 / sxx)), q)
    r2 = _r2(yw, ssr)
    slope_change, curvature_p = _curvature(tw, yw, slope, ss_res_scale)
    large = slope_change is None or abs(slope_change) > max_slope_change
    significant = curvature_p is None or curvature_p < 0.01
    # A constant series has no slope to compare the curvature with: "no growth" says it instead.
    linear = r2 is None or not (large and significant)
    fitted = GrowthFit(
        A=A,
        y0=y0,
        r2=r2,
        n=n,
        t_start=float(tw[0]),
        t_end=float(tw[-1]),
        slope_change=slope_change,
        curvature_p=curvature_p,
        lag1=lag1,
        linear=linear,
        chaotic=chaotic,
        crossed_edge=crossed,
    )
    notes = _growth_notes(fitted, float(yw[0]), edge, min_r2)
    return replace(fitted, warnings=tuple(notes))


# Replicates of the growth slope's bootstrap: its standard error to ~2 % (1/√(2R)), for 1.5–5 ms
# a fit at 20–80 points (which is why the stop rule, asked at every measurement, uses lag-1).
BOOTSTRAP_REPLICATES = 2000


def slope_bootstrap(
    t: np.ndarray, resid: np.ndarray, *, replicates: int = BOOTSTRAP_REPLICATES
) -> np.ndarray:
    """Replicates of (least-squares slope − fitted slope) under a moving-block bootstrap of the
    residuals' increments (Künsch 1989 on the increments).

    A probe's order parameter is a function of the weights, and SGD moves the weights by a noisy
    step each time: the noise around the line accumulates like a random walk, so the residuals
    are not a stationary series to resample, but their increments are (nearly independent for a
    random walk, short-range correlated otherwise). Blocks of ⌈m^(1/3)⌉ of the m increments are
    drawn with replacement, centred, summed back into a residual path and refitted.
    Deterministic (a fixed generator): the same series gives the same interval, as a resumed job
    must. Assumes roughly even spacing in t. Conservative where the noise is independent from one
    measurement to the next: its increments cancel within a block but add up across blocks.
    """
    d = np.diff(resid)
    d = d - d.mean()
    m = d.size
    length = max(1, math.ceil(m ** (1 / 3)))
    count = math.ceil(m / length)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, m - length + 1, size=(replicates, count))
    steps = d[(starts[:, :, None] + np.arange(length)).reshape(replicates, -1)[:, :m]]
    # The path is the running sum of the steps and the slope is linear in it: step i moves every
    # later point, so it enters with the summed weight of the points after it.
    tc = t - t.mean()
    later = np.cumsum((tc / float(tc @ tc))[::-1])[::-1][1:]
    return np.asarray(steps @ later)


# A kink is the transient's end only when the two-segment line explains the series this much
# better than one line (an F statistic on one extra parameter, p ≈ 1e-3 for independent noise) and
# the early segment is the steeper one.
TRANSIENT_MIN_F = 12.0
# The fit keeps at least the last 1 − TRANSIENT_MAX_SHARE of the series.
TRANSIENT_MAX_SHARE = 0.6


def transient_end(t: object, y: object) -> float:
    """When the fast initial transient of a growth series ends (0.0: none seen), detected from
    the data rather than assumed (science.md §7: on the paper model the slope falls from 2–3× its
    later value and settles near τ ≈ 3e-3, later in epochs for smaller rates).

    A continuous two-segment line (a hinge at t_b) is fitted for every candidate t_b in the first
    TRANSIENT_MAX_SHARE of the series; the best hinge marks the end when its early slope is the
    steeper and it beats one straight line by TRANSIENT_MIN_F. fit_growth's linearity check then
    judges what is left. Cost: one 3-parameter least-squares per measurement, negligible beside
    training.
    """
    t_arr, y_arr = _as_series(t, y)
    keep = np.isfinite(t_arr) & np.isfinite(y_arr)
    t_arr, y_arr = t_arr[keep], y_arr[keep]
    n = int(t_arr.size)
    if n < 8:
        return 0.0
    line = np.column_stack([np.ones(n), t_arr])
    ssr_line = float(np.sum((y_arr - line @ np.linalg.lstsq(line, y_arr, rcond=None)[0]) ** 2))
    best: tuple[float, float] | None = None  # (ssr, t_b)
    for i in range(2, int(TRANSIENT_MAX_SHARE * n)):
        t_b = float(t_arr[i])
        hinge = np.column_stack([line, np.minimum(t_arr - t_b, 0.0)])  # extra slope before t_b
        coef = np.linalg.lstsq(hinge, y_arr, rcond=None)[0]
        if coef[2] <= 0:  # the early segment is not the steeper one: no transient here
            continue
        ssr = float(np.sum((y_arr - hinge @ coef) ** 2))
        if best is None or ssr < best[0]:
            best = (ssr, t_b)
    if best is None:
        return 0.0
    if best[0] <= 0:  # an exact kink (noise-free series)
        return best[1]
    f_stat = (ssr_line - best[0]) / (best[0] / (n - 3))
    return best[1] if f_stat > TRANSIENT_MIN_F else 0.0


def _growth_window(
    t_arr: np.ndarray,
    y_arr: np.ndarray,
    t_min: float | None,
    t_max: float | None,
    edge: float | None,
) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    """The points fit_growth fits, and whether the series starts at (chaotic) or crosses the edge
    (cut there); raises FitError when too few are left."""
    tw, yw, n_bad = _window(t_arr, y_arr, t_min, t_max)
    chaotic = crossed = False
    if edge is not None and tw.size:
        above = np.flatnonzero(yw >= edge)
        if above.size and above[0] == 0:
            chaotic = True
        elif above.size:
            crossed = True
            tw, yw = tw[: above[0]], yw[: above[0]]
    n = int(tw.size)
    if n < 4:
        raise FitError(
            f"fit_growth needs at least 4 points (2 for the line, 1 for its error, 1 for the "
            f"linearity check); got {n} of {t_arr.size} after dropping {n_bad} non-finite, "
            f"those outside t_min={t_min}, t_max={t_max}"
            + (f" and those at or past the edge y ≥ {edge}" if crossed else "")
        )
    if np.ptp(tw) == 0:
        raise FitError(f"fit_growth needs points at different times; all {n} are at t = {tw[0]}")
    return tw, yw, chaotic, crossed


def _curvature(
    tw: np.ndarray, yw: np.ndarray, slope: float, ss_res_scale: float
) -> tuple[float | None, float | None]:
    """(slope change across the window as a fraction of the slope, two-sided p of the quadratic
    term) for the linearity check."""
    # Linearity: is the quadratic term both large and significant? Its noise comes from a cubic
    # fit (the fuller model's residuals, as in a lack-of-fit test): judged against the quadratic's
    # own residuals, the smooth misfit of a curved series would pass for slowly wandering noise
    # (lag-1 correlation near 1, hardly any effective points) and hide the very curvature tested.
    n = int(tw.size)
    tc = tw - float(tw.mean())
    span = float(tw[-1] - tw[0])
    x = tc / span
    design = np.column_stack([np.ones(n), x, x * x])
    coef, *_ = np.linalg.lstsq(design, yw, rcond=None)
    c2 = float(coef[2])  # d²y/dx² / 2 with x = t/span
    slope_change = 2 * c2 / (abs(slope) * span) if slope != 0 else None
    full = np.column_stack([design, x**3]) if n >= 6 else design
    coef_f, *_ = np.linalg.lstsq(full, yw, rcond=None)
    resid_f = yw - full @ coef_f
    ssr_f = float(np.sum(resid_f * resid_f))
    curvature_p: float | None = None
    if ssr_f > ss_res_scale:
        n_full = full.shape[1]
        dof_f = _effective_dof(n, _lag1(resid_f, n_full), n_full)
        cov_unit = np.linalg.inv(design.T @ design)
        se_c2 = math.sqrt(ssr_f / dof_f * float(cov_unit[2, 2]))
        curvature_p = float(2 * stats.t.sf(abs(c2) / se_c2, dof_f))
    return slope_change, curvature_p


def _growth_notes(g: GrowthFit, y_first: float, edge: float | None, min_r2: float) -> list[str]:
    """The plain-language warnings of a growth fit."""
    notes: list[str] = []
    where = f"over epochs {g.t_start:.3g}–{g.t_end:.3g}"
    if g.chaotic:
        notes.append(
            f"chaotic from the start: y = {y_first:.3g} ≥ edge {edge} at t = {g.t_start:.3g}; the "
            "linear growth law holds only in the ordered phase, so this slope is not a growth "
            "rate (lower η/((1−α)B))"
        )
    if g.crossed_edge:
        notes.append(
            f"the series reached the edge y ≥ {edge}; only the {g.n} points before it are fitted"
        )
    if g.r2 is None:
        notes.append(f"y is constant {where}: no growth measured")
    elif g.r2 < min_r2:
        notes.append(f"low R² = {g.r2:.3f} < {min_r2} {where}: noise dominates the growth")
    if not g.linear:
        change = "n/a" if g.slope_change is None else f"{100 * g.slope_change:+.0f} %"
        p_text = "n/a, exact fit" if g.curvature_p is None else f"{g.curvature_p:.2g}"
        notes.append(
            f"y is not linear in time {where}: the slope changes by {change} across the window "
            f"(quadratic term p = {p_text}); the fitted A is an average and the growth law may "
            "not hold here"
        )
    if g.A.value <= 0:
        notes.append(f"no growth: A = {g.A.value:.3g} ≤ 0 {where}")
    return notes


# ---------------------------------------------------------------------------------------------
# Scaling: A = k·η^a·(1/B)^b·(1/(1−α))^c


@dataclass(frozen=True)
class ExponentFit(_Result):
    knob: Knob
    value: Estimate
    fitted: bool  # False: the knob did not vary or was fixed; exponent assumed = 1 (theory)


@dataclass(frozen=True)
class ScalingFit(_Result):
    """A = k·η^a·(1/B)^b·(1/(1−α))^c fitted by (weighted) least squares on log A.

    `k` goes with the fitted exponents; `k_theory` is k with every exponent = 1, the geometric
    (weighted) mean of A·(1−α)·B/η. `theory_consistent`: every fitted exponent's interval holds 1,
    in which case `k_theory` is the number to use (it is far better determined).
    """

    k: Estimate
    exponents: tuple[ExponentFit, ...]
    k_theory: Estimate
    theory_consistent: bool
    r2: float | None  # of log A, weighted; None when log A has no spread
    n: int
    dof: int
    weighted: bool
    # What `predict_A` needs: the covariance of (log k, fitted exponents in `exponents` order),
    # the variance of log k_theory, and the interval multipliers used.
    log_cov: tuple[tuple[float, ...], ...]
    q: float
    theory_log_var: float
    theory_q: float
    warnings: tuple[str, ...] = field(default=())

    def exponent(self, knob: Knob) -> ExponentFit:
        return next(e for e in self.exponents if e.knob == knob)

    def predict_A(self, eta: float, batch: float, momentum: float, *, theory: bool) -> Estimate:
        """Growth rate at a configuration, with its 95 % interval (exponents = 1 if `theory`)."""
        regressors = _log_regressors(np.array([eta]), np.array([batch]), np.array([momentum]))
        if theory:
            log_a = math.log(self.k_theory.value) + sum(float(r[0]) for r in regressors.values())
            se = math.sqrt(self.theory_log_var)
            q = self.theory_q
        else:
            x = [1.0]
            log_a = math.log(self.k.value)
            for e in self.exponents:
                log_a += e.value.value * float(regressors[e.knob][0])
                if e.fitted:
                    x.append(float(regressors[e.knob][0]))
            vec = np.array(x)
            se = math.sqrt(float(vec @ np.array(self.log_cov) @ vec))
            q = self.q
        return _lognormal_estimate(log_a, se, q)


def _exp(x: float) -> float:
    """e^x, inf beyond the float range: a law extrapolated far from its probes predicts an
    unbounded value (a reason for the caller to refuse it), never an OverflowError."""
    return math.exp(x) if x < _MAX_EXP else math.inf


def _lognormal_estimate(log_value: float, log_se: float, q: float) -> Estimate:
    value = _exp(log_value)
    se = value * log_se if log_se > 0 else 0.0
    return Estimate(value, se, _exp(log_value - q * log_se), _exp(log_value + q * log_se))


def _log_regressors(
    eta: np.ndarray, batch: np.ndarray, momentum: np.ndarray
) -> dict[Knob, np.ndarray]:
    return {"eta": np.log(eta), "batch": -np.log(batch), "momentum": -np.log1p(-momentum)}


def fit_scaling(
    A: object,
    eta: object,
    batch: object,
    momentum: object,
    *,
    A_se: object | None = None,
    free: tuple[Knob, ...] = KNOBS,
) -> ScalingFit:
    """Fit the growth-rate scaling law to per-probe growth rates A (per epoch).

    Least squares on log A = log k + Σ_free e_j·log x_j + Σ_fixed log x_j: a knob not in `free`,
    or one that takes a single value across the probes, is not fitted and its exponent is assumed
    to be 1. With `A_se` (the growth fits' standard errors) the points are weighted by
    1/(A_se/A)², the variance of log A; the overall noise level still comes from the residuals
    (t quantiles with n − p degrees of freedom), except with no residual degrees of freedom, where
    A_se is taken at face value (normal quantiles).

    Raises FitError on non-positive A, η, B, momentum outside [0, 1), non-positive A_se, free knobs
    that vary together (e.g. η and B scaled alike), or too few probes for the free exponents.
    """
    a, eta_arr, batch_arr, mom_arr, w = _scaling_inputs(A, eta, batch, momentum, A_se, free)
    n = int(a.size)
    weighted = A_se is not None
    regressors = _log_regressors(eta_arr, batch_arr, mom_arr)
    notes: list[str] = []
    fitted = _fitted_knobs(regressors, free, notes)
    offset = sum((regressors[k] for k in KNOBS if k not in fitted), np.zeros(n))
    target = np.log(a) - offset
    design = np.column_stack([np.ones(n)] + [regressors[k] for k in fitted])
    p = design.shape[1]
    if np.linalg.matrix_rank(design) < p:
        names = ", ".join(_KNOB_LABEL[k] for k in fitted)
        raise FitError(
            f"the free knobs ({names}) vary together across the probes, so their exponents "
            "cannot be told apart; vary them independently or fix one"
        )
    dof = n - p
    if dof == 0 and not weighted:
        raise FitError(
            f"{n} probe(s) for {p} parameter(s) leave no degrees of freedom for an error "
            "estimate; add probes, fix knobs, or pass A_se"
        )

    coef, cov, q, ssr = _weighted_lstsq(design, target, w, dof)
    ses = np.sqrt(np.diag(cov))
    k = _lognormal_estimate(float(coef[0]), float(ses[0]), q)
    exponents: list[ExponentFit] = []
    for knob in KNOBS:
        if knob in fitted:
            i = 1 + fitted.index(knob)
            exponents.append(ExponentFit(knob, _normal_estimate(coef[i], ses[i], q), True))
        else:
            exponents.append(ExponentFit(knob, Estimate.exact(1.0), False))

    k_theory, theory_var, theory_q = _theory_k(a, regressors, w)
    consistent = all(e.value.contains(1.0) for e in exponents if e.fitted)
    notes.extend(_exponent_notes(exponents))
    if 0 < dof < 3:
        notes.append(f"only {dof} residual degree(s) of freedom: the intervals are wide")
    return ScalingFit(
        k=k,
        exponents=tuple(exponents),
        k_theory=k_theory,
        theory_consistent=consistent,
        r2=_r2(target + offset, ssr, w),
        n=n,
        dof=dof,
        weighted=weighted,
        log_cov=tuple(tuple(float(v) for v in row) for row in cov),
        q=q,
        theory_log_var=theory_var,
        theory_q=theory_q,
        warnings=tuple(notes),
    )


def _weighted_lstsq(
    design: np.ndarray, target: np.ndarray, w: np.ndarray, dof: int
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(coefficients, their covariance, the interval multiplier, the weighted residual sum of
    squares): noise from the residuals, or the weights at face value with no dof left."""
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(design * sw[:, None], target * sw, rcond=None)
    resid = target - design @ coef
    ssr = float(np.sum(w * resid * resid))
    unit_cov = np.linalg.inv(design.T @ (design * w[:, None]))
    if dof > 0:
        cov = unit_cov * (ssr / dof)
        q = _t_quantile(dof)
    else:
        cov, q = unit_cov, float(stats.norm.ppf(0.5 + CI_LEVEL / 2))
    return coef, cov, q, ssr


def _fitted_knobs(
    regressors: dict[Knob, np.ndarray], free: tuple[Knob, ...], notes: list[str]
) -> list[Knob]:
    """The free knobs that vary across the probes (their exponents are fitted)."""
    fitted: list[Knob] = []
    for knob in KNOBS:
        x = regressors[knob]
        if knob in free and np.ptp(x) > 1e-12 * max(1.0, float(np.max(np.abs(x)))):
            fitted.append(knob)
        elif knob in free:
            notes.append(f"{_KNOB_LABEL[knob]} did not vary across the probes: exponent assumed 1")
    return fitted


def _exponent_notes(exponents: list[ExponentFit]) -> list[str]:
    """A warning for each fitted exponent whose interval excludes the theory's 1."""
    notes: list[str] = []
    for e in exponents:
        if e.fitted and not e.value.contains(1.0):
            v = e.value
            notes.append(
                f"the exponent of {_KNOB_LABEL[e.knob]} is {v.value:.2f} [{v.low:.2f}, "
                f"{v.high:.2f}], excluding the theory's 1: A ∝ η/((1−α)B) does not hold over "
                "these probes, so k_theory is not a constant here"
            )
    return notes


def _scaling_inputs(
    A: object,
    eta: object,
    batch: object,
    momentum: object,
    A_se: object | None,
    free: tuple[Knob, ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """fit_scaling's inputs checked, as arrays (A, η, B, α), and the weights 1/var(log A)."""
    arrays = [np.atleast_1d(np.asarray(v, dtype=float)) for v in (A, eta, batch, momentum)]
    a, eta_arr, batch_arr, mom_arr = arrays
    n = int(a.size)
    if n == 0 or any(v.ndim != 1 or v.size != n for v in arrays):
        raise FitError(
            "A, eta, batch and momentum must be non-empty 1-D arrays of equal length "
            f"(got sizes {[v.size for v in arrays]})"
        )
    unknown = [k for k in free if k not in KNOBS]
    if unknown:
        raise FitError(f"unknown knob(s) in free: {unknown}; choose from {list(KNOBS)}")
    for name, values, ok in (
        ("A", a, a > 0),
        ("eta", eta_arr, eta_arr > 0),
        ("batch", batch_arr, batch_arr > 0),
        ("momentum", mom_arr, (mom_arr >= 0) & (mom_arr < 1)),
    ):
        bad = np.flatnonzero(~(ok & np.isfinite(values)))
        if bad.size:
            hint = " (drop probes without growth: chaotic or flat)" if name == "A" else ""
            raise FitError(
                f"{name} out of range at probe(s) {bad.tolist()}: {values[bad].tolist()}{hint}"
            )
    if A_se is not None:
        se = np.atleast_1d(np.asarray(A_se, dtype=float))
        if se.shape != a.shape:
            raise FitError(f"A_se must have the shape of A ({a.shape}); got {se.shape}")
        bad = np.flatnonzero(~(np.isfinite(se) & (se > 0)))
        if bad.size:
            raise FitError(
                f"A_se must be positive and finite; bad at probe(s) {bad.tolist()} "
                "(pass A_se=None for an unweighted fit)"
            )
        w = (a / se) ** 2  # 1/var(log A)
    else:
        w = np.ones(n)
    return a, eta_arr, batch_arr, mom_arr, w


def _theory_k(
    a: np.ndarray, regressors: dict[Knob, np.ndarray], w: np.ndarray
) -> tuple[Estimate, float, float]:
    """k with every exponent = 1 (the weighted geometric mean of A·(1−α)·B/η), the variance of
    its log and the interval multiplier."""
    n = int(a.size)
    # Theory: every exponent = 1, log k_i = log A_i − log(η_i/((1−α_i)·B_i)).
    log_k_i = np.log(a) - sum(regressors[k] for k in KNOBS)
    log_k_t = float(np.sum(w * log_k_i) / np.sum(w))
    if n > 1:
        theory_var = float(np.sum(w * (log_k_i - log_k_t) ** 2)) / (n - 1) / float(np.sum(w))
        theory_q = _t_quantile(n - 1)
    else:
        theory_var, theory_q = 1.0 / float(np.sum(w)), float(stats.norm.ppf(0.5 + CI_LEVEL / 2))
    k_theory = _lognormal_estimate(log_k_t, math.sqrt(theory_var), theory_q)
    return k_theory, theory_var, theory_q


# ---------------------------------------------------------------------------------------------
# Decay: dy/dt = A − D·y


def _relaxation(tau: np.ndarray, y0: float, A: float, D: float) -> np.ndarray:
    """y0·e^(−D·τ) + A·τ·φ(D·τ), φ(x) = (1 − e^(−x))/x: exact, and continuous at D = 0."""
    x = D * tau
    small = np.abs(x) < 1e-6
    safe = np.where(small, 1.0, x)
    phi = np.where(small, 1 - x / 2 + x * x / 6, -np.expm1(-safe) / safe)
    return y0 * np.exp(-x) + A * tau * phi


@dataclass(frozen=True)
class DecayFit(_Result):
    """y(t) = y_eq + (y0 − y_eq)·e^(−D·(t − t0)), y_eq = A/D, fitted over t ≥ t0 (epochs)."""

    A: Estimate  # exact (se 0) when given
    D: Estimate
    y0: Estimate  # at t0
    y_eq: Estimate  # high = inf when D's interval reaches 0 (no equilibrium is established)
    t0: float
    r2: float | None
    n: int
    A_fitted: bool
    warnings: tuple[str, ...] = field(default=())


def fit_decay(
    t: object,
    y: object,
    *,
    A: float | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
) -> DecayFit:
    """Nonlinear least squares (scipy curve_fit) of the relaxation y' = A − D·y for D, y0 and,
    unless given, A (given A: e.g. the growth rate of the same configuration without decay).

    The start is the best point of a grid over D (for fixed D the model is linear in y0 and A),
    so the fit does not depend on a guess. Intervals: t quantiles with n − p degrees of freedom and
    the residual noise; y_eq = A/D by the delta method (with the A–D covariance when A is fitted).
    A probe too short to see the bend leaves D's interval reaching 0: y_eq's upper end is then
    unbounded and a warning says so. Raises FitError with too few points or no spread in t.
    """
    t_arr, y_arr = _as_series(t, y)
    tw, yw, n_bad = _window(t_arr, y_arr, t_min, t_max)
    p = 2 if A is not None else 3
    n = int(tw.size)
    if n < p + 2:
        raise FitError(
            f"fit_decay needs at least {p + 2} points for {p} parameters; got {n} of "
            f"{t_arr.size} after dropping {n_bad} non-finite and those outside t_min={t_min}, "
            f"t_max={t_max}"
        )
    if np.ptp(tw) == 0:
        raise FitError(f"fit_decay needs points at different times; all {n} are at t = {tw[0]}")
    if A is not None and not math.isfinite(A):
        raise FitError(f"A must be finite; got {A}")
    t0 = float(tw[0])
    tau = tw - t0
    popt, pcov = _decay_curve_fit(tau, yw, A)
    dof = n - p
    q = _t_quantile(dof)
    ses = np.sqrt(np.diag(pcov))
    if A is None:
        y0_e = _normal_estimate(popt[0], ses[0], q)
        a_e = _normal_estimate(popt[1], ses[1], q)
        d_e = _normal_estimate(popt[2], ses[2], q)
        var_a, var_d, cov_ad = float(pcov[1, 1]), float(pcov[2, 2]), float(pcov[1, 2])
    else:
        y0_e = _normal_estimate(popt[0], ses[0], q)
        a_e = Estimate.exact(A)
        d_e = _normal_estimate(popt[1], ses[1], q)
        var_a, var_d, cov_ad = 0.0, float(pcov[1, 1]), 0.0
    resid = yw - _relaxation(tau, y0_e.value, a_e.value, d_e.value)
    r2 = _r2(yw, float(np.sum(resid * resid)))

    notes: list[str] = []
    a_v, d_v = a_e.value, d_e.value
    if d_v > 0:
        y_eq_v = a_v / d_v
        # Delta method: ∂(A/D)/∂A = 1/D, ∂(A/D)/∂D = −A/D².
        var_eq = var_a / d_v**2 + a_v**2 * var_d / d_v**4 - 2 * a_v * cov_ad / d_v**3
        y_eq = _normal_estimate(y_eq_v, math.sqrt(max(var_eq, 0.0)), q)
    else:  # no equilibrium at the fitted D; the interval's upper D still bounds y_eq below
        low = a_v / d_e.high if d_e.high > 0 else math.inf
        y_eq = Estimate(math.inf, math.inf, low, math.inf)
    if d_e.low <= 0:
        y_eq = Estimate(y_eq.value, y_eq.se, y_eq.low, math.inf)
        notes.append(
            f"decay not resolved: D = {d_v:.3g} [{d_e.low:.3g}, {d_e.high:.3g}] per epoch "
            f"reaches 0 over epochs {tw[0]:.3g}–{tw[-1]:.3g}, so the equilibrium is unbounded "
            "above; run the probe longer or with more decay"
        )
    return DecayFit(
        A=a_e,
        D=d_e,
        y0=y0_e,
        y_eq=y_eq,
        t0=t0,
        r2=r2,
        n=n,
        A_fitted=A is None,
        warnings=tuple(notes),
    )


def _decay_curve_fit(
    tau: np.ndarray, yw: np.ndarray, A: float | None
) -> tuple[list[float], np.ndarray]:
    """curve_fit of the relaxation from the best start on a grid over D: (popt, pcov), with
    (y0, A, D) or, given A, (y0, D)."""
    span = float(tau[-1])
    best: tuple[float, float, float, float] | None = None  # (ssr, y0, A, D)
    for d in np.concatenate([[0.0], np.geomspace(1e-3, 1e2, 61) / span]):
        e = np.exp(-d * tau)
        g = _relaxation(tau, 0.0, 1.0, float(d))
        if A is None:
            coef, *_ = np.linalg.lstsq(np.column_stack([e, g]), yw, rcond=None)
            y0_d, a_d = float(coef[0]), float(coef[1])
        else:
            a_d = A
            y0_d = float(np.sum(e * (yw - A * g)) / np.sum(e * e))
        ssr = float(np.sum((yw - y0_d * e - a_d * g) ** 2))
        if best is None or ssr < best[0]:
            best = (ssr, y0_d, a_d, float(d))
    assert best is not None
    _, y0_s, a_s, d_s = best
    if d_s == 0:
        d_s = 1e-3 / span  # curve_fit's finite differences need a non-degenerate step

    def model_free(x: np.ndarray, y0: float, a: float, d: float) -> np.ndarray:
        return _relaxation(x, y0, a, d)

    def model_fixed(x: np.ndarray, y0: float, d: float) -> np.ndarray:
        assert A is not None
        return _relaxation(x, y0, A, d)

    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("error", optimize.OptimizeWarning)
            with np.errstate(over="ignore", invalid="ignore"):
                if A is None:
                    popt, pcov = optimize.curve_fit(model_free, tau, yw, p0=[y0_s, a_s, d_s])
                else:
                    popt, pcov = optimize.curve_fit(model_fixed, tau, yw, p0=[y0_s, d_s])
    except (RuntimeError, optimize.OptimizeWarning) as exc:
        raise FitError(f"the decay fit did not converge: {exc}") from exc
    if not np.all(np.isfinite(pcov)):
        raise FitError("the decay fit's covariance is singular: D, A and y0 are not identifiable")
    return [float(v) for v in popt], pcov


# ---------------------------------------------------------------------------------------------
# Decay that puts the equilibrium at the edge


@dataclass(frozen=True)
class Knobs:
    """SGD settings of one run; weight_decay in PyTorch's convention (= 2λ of the paper)."""

    eta: float
    momentum: float
    batch: float
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not (self.eta > 0 and self.batch > 0 and 0 <= self.momentum < 1):
            raise FitError(f"need eta > 0, batch > 0, 0 ≤ momentum < 1; got {self}")
        if not self.weight_decay >= 0:
            raise FitError(f"need weight_decay ≥ 0; got {self.weight_decay}")

    @property
    def effective_rate(self) -> float:
        """η/((1−α)·B): A and D both scale with it (science.md §3–4)."""
        return self.eta / ((1 - self.momentum) * self.batch)


@dataclass(frozen=True)
class EdgeDecay(_Result):
    """The weight decay whose equilibrium A/D equals `target` for the run."""

    weight_decay: Estimate  # PyTorch `weight_decay`
    paper_lambda: Estimate  # = weight_decay/2 (the paper's λ‖W‖²)
    decay_coefficient: Estimate  # c_D = D/(wd·η/((1−α)B)); simple theory: 2·S
    target: float
    warnings: tuple[str, ...] = field(default=())


def decay_coefficient(D: Estimate, probe: Knobs) -> Estimate:
    """c_D = D·(1−α)·B/(η·wd) of a decay probe: D per epoch per unit weight_decay·η/((1−α)B)."""
    if probe.weight_decay <= 0:
        raise FitError("the decay probe must have weight_decay > 0 to measure D")
    scale = 1.0 / (probe.weight_decay * probe.effective_rate)
    return Estimate(D.value * scale, D.se * scale, D.low * scale, D.high * scale)


def _relative_log_half_width(e: Estimate, name: str) -> float:
    if not e.value > 0:
        raise FitError(f"{name} must be > 0 to set a decay; got {e.value}")
    return max(e.high - e.value, e.value - e.low) / e.value


def edge_weight_decay(
    A_run: Estimate, D_probe: Estimate, *, probe: Knobs, run: Knobs, target: float = EDGE
) -> EdgeDecay:
    """Weight decay (PyTorch convention) that puts the run's equilibrium A/D at `target`.

    Convention: D = c_D·wd·η/((1−α)·B) per epoch. One SGD step scales W by (1 − η_eff·wd) with
    η_eff = η/(1−α), so J² = fan_in·var(W) shrinks by ≈ 2·η_eff·wd per step and S/B steps make an
    epoch: c_D = 2·S in the simple derivation (S = training-set size); c_D is measured here from
    the decay probe (`decay_coefficient`), not assumed. The run's equilibrium is
    A_run/(c_D·wd·η/((1−α)B)) = target, so wd = A_run·(1−α)B/(η·c_D·target). With the theory's
    growth law A_run = k·η/((1−α)B) this is wd = k/(c_D·target): independent of η, α and B, and
    with c_D = 2S and target 1 it is the paper's λ* = wd/2 = k/(4S) (science.md §4).

    Interval: A_run and D_probe come from independent probes; their relative 95 % half-widths
    (the larger side) are added in quadrature and applied in log space, so the interval stays
    positive. A_run's interval is for the run's A (e.g. `ScalingFit.predict_A`).
    """
    c = decay_coefficient(D_probe, probe)
    wd = A_run.value / (run.effective_rate * c.value * target)
    h = math.hypot(
        _relative_log_half_width(A_run, "A_run"), _relative_log_half_width(D_probe, "D_probe")
    )
    se = wd * math.hypot(A_run.se / A_run.value, D_probe.se / D_probe.value)
    # h is a relative half-width, unbounded: an interval wider than e^709 is open above.
    low, high = wd * math.exp(-h), wd * _exp(h)
    notes: list[str] = []
    # wd ∝ A/D: an interval of D reaching 0 (or of A reaching 0) leaves wd unbounded above (below).
    if D_probe.low <= 0:
        high = math.inf
        notes.append("the decay probe did not resolve D (its interval reaches 0): no upper bound")
    if A_run.low <= 0:
        low = 0.0
        notes.append("the run's growth rate A is not resolved (its interval reaches 0)")
    wd_e = Estimate(wd, se, low, high)
    lam = Estimate(wd / 2, se / 2, low / 2, high / 2)
    return EdgeDecay(
        weight_decay=wd_e,
        paper_lambda=lam,
        decay_coefficient=c,
        target=target,
        warnings=tuple(notes),
    )


# ---------------------------------------------------------------------------------------------
# Predictions


def predict_trajectory(epochs: object, A: float, D: float, y_init: float) -> np.ndarray:
    """y(t) from y(0) = y_init: y_init + A·t when D = 0, else A/D + (y_init − A/D)·e^(−D·t)."""
    t = np.asarray(epochs, dtype=float)
    return _relaxation(t, y_init, A, D)


def edge_time(A: float, y_init: float, target: float = EDGE, *, D: float = 0.0) -> float:
    """Epoch at which y reaches `target` from y_init: (target − y_init)/A without decay, else
    ln((y_eq − y_init)/(y_eq − target))/D. 0 when already there; inf when never reached (A ≤ 0,
    or an equilibrium at or below the target). For an interval, call it at A's interval ends.
    """
    if y_init >= target:
        return 0.0
    if D == 0:
        return (target - y_init) / A if A > 0 else math.inf
    y_eq = A / D
    if D < 0:
        # No equilibrium: y runs away from A/D, upward only if it starts above it.
        if y_init <= y_eq:
            return math.inf
        return math.log((target - y_eq) / (y_init - y_eq)) / -D
    if y_eq <= target:
        return math.inf
    return math.log((y_eq - y_init) / (y_eq - target)) / D
