"""A job's plots, drawn from its stored probe records and recommendation (matplotlib, no display).

    order       the order parameter of each hidden layer against epochs, one line per probe
    collapse    the growth probes' order parameter against t·η/((1−α)B): one line below the edge
    growth      fitted growth rate A against η/((1−α)B), log–log, with the fit A = k·x and its CI
    trajectory  the recommended run's predicted trajectory (and the verification run's, if any)

and, over several jobs, `compare`: each job's recommended-run trajectory on one plot.

`render(name, data, format)` and `render_compare(jobs, format)` are pure: values in, PNG or SVG
bytes out. It uses matplotlib's
object API (a Figure per call, never pyplot's global state), so requests can render in parallel
threads. It reads no database: app.service.plot_data gathers a job's PlotData.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from app.errors import ProblemError
from app.schemas import (
    EDGE,
    PLOT_NAMES,
    TERMINAL_STATUSES,
    Hyperparameters,
    OrderKind,
    PlotName,
    ProbeGrowth,
    ProbeOrder,
    ProbeOut,
    Recommendation,
)
from edgetune.measured import MeasuredRun

Format = Literal["png", "svg"]
MEDIA_TYPES: dict[Format, str] = {"png": "image/png", "svg": "image/svg+xml"}
# 800 × 500 pixels as PNG.
SIZE_INCHES = (8.0, 5.0)
DPI = 100
EDGE_STYLE: dict[str, Any] = {"color": "#c0392b", "linestyle": "--", "linewidth": 1.2}
# Panels of the order plot; deeper networks show their first and last layers.
MAX_LAYER_PANELS = 4
# Above this the order parameter has run far past the edge: a log axis keeps the rest readable.
LOG_SCALE_ABOVE = 5.0
# The most jobs one compare plot shows: one of matplotlib's ten default colours each, and a
# legend that still fits under the axes.
MAX_COMPARED = 10


class PlotUnavailable(Exception):
    """The job has not (yet) produced the data this plot needs."""


@dataclass(frozen=True)
class PlotData:
    job_id: str
    status: str
    probes: list[ProbeOut]
    recommendation: Recommendation | None
    # The user's own runs of the recommendation, as edgetune.monitor reported them.
    measured: Sequence[MeasuredRun] = ()


@dataclass(frozen=True)
class JobTrajectory:
    """One job of the compare plot: its result (None until it has succeeded), and what the
    legend names it by besides its id (the spec's model and dataset)."""

    job_id: str
    status: str
    recommendation: Recommendation | None
    title: str


def parse_name(name: str, format: str | None) -> tuple[PlotName, Format]:
    """`order`, `order.svg`, ... with ?format= → (name, format); 404 problem for unknown names."""
    base, dot, suffix = name.rpartition(".")
    if not dot:
        base, suffix = name, ""
    if suffix and suffix not in MEDIA_TYPES:
        base, suffix = name, ""
    if base not in PLOT_NAMES:
        raise ProblemError(
            404,
            "Plot not found",
            f"there is no plot {name!r}; plots: {', '.join(PLOT_NAMES)} (.png or .svg)",
            "plot-not-found",
        )
    if format is not None and suffix and format != suffix:
        raise ProblemError(
            400,
            "Conflicting plot format",
            f"the name asks for {suffix} and ?format= for {format}",
            "invalid-format",
        )
    return base, parse_format(format or suffix)  # base: checked against PLOT_NAMES above


def parse_format(format: str | None) -> Format:
    """?format= → png (the default) or svg; 400 problem for anything else."""
    chosen = format or "png"
    if chosen == "png":
        return "png"
    if chosen == "svg":
        return "svg"
    raise ProblemError(
        400, "Unknown plot format", f"format must be png or svg, not {chosen!r}", "invalid-format"
    )


def parse_job_ids(jobs: str) -> list[str]:
    """?jobs=ID1,ID2,... → the ids once each, in order; 422 problem for none or too many."""
    ids = list(dict.fromkeys(part.strip() for part in jobs.split(",") if part.strip()))
    if not 1 <= len(ids) <= MAX_COMPARED:
        message = f"give 1 to {MAX_COMPARED} comma-separated job ids, not {len(ids)}"
        raise ProblemError(
            422,
            "Unprocessable request",
            f"jobs: {message}",
            "validation-failed",
            errors=[{"field": "jobs", "message": message, "type": "validation-failed"}],
        )
    return ids


def order_kind(data: PlotData) -> OrderKind:
    """The order parameter the worker measured: the recommendation's, else the probes'."""
    if data.recommendation is not None:
        return data.recommendation.edge.order_parameter.name
    return next((p.order.kind for p in data.probes if p.order is not None), "J2")


def _symbol(kind: OrderKind) -> str:
    return "J²" if kind == "J2" else "χ"


def _probe_label(key: str, config: Mapping[str, Any], diverged: bool = False) -> str:
    label = (
        f"{key}: η={config.get('learning_rate', 0):.3g}, "
        f"α={config.get('momentum', 0):g}, B={config.get('batch_size', '?')}"
    )
    if config.get("weight_decay"):
        label += f", wd={config['weight_decay']:.2g}"
    if diverged:
        label += " (diverged)"
    return label


def _label(probe: ProbeOut) -> str:
    return _probe_label(probe.key, probe.config, probe.outcome == "diverged")


def _figure() -> tuple[Figure, FigureCanvasAgg]:
    figure = Figure(figsize=SIZE_INCHES, dpi=DPI, layout="constrained")
    return figure, FigureCanvasAgg(figure)


def _edge_line(ax: Axes, label: bool = True) -> None:
    ax.axhline(EDGE, **EDGE_STYLE, label="edge of chaos (= 1)" if label else None)


def _fit_y_axis(ax: Axes, values: list[float]) -> None:
    """Always show the edge; switch to a log axis when a probe ran far past it."""
    finite = [v for v in values if math.isfinite(v)]
    top = max(finite, default=EDGE)
    if top > LOG_SCALE_ABOVE and min(finite, default=1.0) > 0:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, max(EDGE * 1.15, top * 1.05))


def _growth_keys(data: PlotData) -> list[str]:
    """Keys of the growth probes: the recommendation's list, else every probe without decay."""
    if data.recommendation is not None and data.recommendation.edge.probes:
        return [p.key for p in data.recommendation.edge.probes]
    return [p.key for p in data.probes if not p.config.get("weight_decay")]


def _require_probes(data: PlotData) -> list[tuple[ProbeOut, ProbeOrder]]:
    measured = [(p, p.order) for p in data.probes if p.order is not None and p.order.epoch]
    if not measured:
        if data.status in TERMINAL_STATUSES:
            raise PlotUnavailable(f"job {data.job_id} {data.status} before any probe finished")
        raise PlotUnavailable(
            f"job {data.job_id} is {data.status} and has no probe measurements yet"
        )
    return measured


def _require_recommendation(data: PlotData) -> tuple[Recommendation, Hyperparameters]:
    result = data.recommendation
    if result is None and data.status in TERMINAL_STATUSES:
        raise PlotUnavailable(f"job {data.job_id} {data.status}: it ended without a recommendation")
    if result is None:
        raise PlotUnavailable(f"job {data.job_id} is {data.status}: there is no recommendation yet")
    if result.hyperparameters is None:
        reason = result.validity.reason or "no reason given"
        raise PlotUnavailable(f"job {data.job_id} made no recommendation: {reason}")
    return result, result.hyperparameters


def _order_axes(figure: Figure, panels: int) -> list[Axes]:
    """One panel per layer, two panels to a row, so that each keeps a readable width."""
    columns = min(panels, 2)
    rows = math.ceil(panels / columns)
    grid = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    axes = list(grid.flat)
    for extra in axes[panels:]:
        extra.set_visible(False)
    return axes[:panels]


def plot_order(data: PlotData) -> Figure:
    probes = _require_probes(data)
    symbol = _symbol(order_kind(data))
    layers = max(len(order.layers[0]) for _, order in probes)
    shown = list(range(layers))
    if layers > MAX_LAYER_PANELS:
        shown = [*range(MAX_LAYER_PANELS - 1), layers - 1]
    figure, _ = _figure()
    axes = _order_axes(figure, len(shown))
    columns = min(len(shown), 2)
    everything: list[float] = []
    for panel, (ax, layer) in enumerate(zip(axes, shown, strict=True)):
        for i, (probe, order) in enumerate(probes):
            y = [values[layer] if layer < len(values) else math.nan for values in order.layers]
            everything.extend(y)
            ax.plot(
                order.epoch,
                y,
                color=f"C{i % 10}",
                linestyle=":" if probe.config.get("weight_decay") else "-",
                marker="." if len(y) < 15 else None,
                label=_label(probe) if panel == 0 else None,
            )
        _edge_line(ax, label=panel == 0)
        ax.set_title(f"hidden layer {layer + 1}", fontsize="medium")
        ax.grid(alpha=0.3)
        if panel + columns >= len(shown):  # the lowest panel of its column
            ax.set_xlabel("training time (epochs)")
            ax.xaxis.set_tick_params(labelbottom=True)
    _fit_y_axis(axes[0], everything)
    figure.supylabel(
        f"order parameter {symbol}" + ("  (J² = fan_in·var W)" if symbol == "J²" else ""),
        fontsize="medium",
    )
    title = f"Order parameter {symbol} per hidden layer during each probe"
    if layers > len(shown):
        title += f" (layers {', '.join(str(s + 1) for s in shown)} of {layers})"
    figure.suptitle(title)
    figure.legend(
        loc="outside lower center", ncols=3, fontsize="small", title="probe (dotted: with decay)"
    )
    return figure


def plot_collapse(data: PlotData) -> Figure:
    keys = set(_growth_keys(data))
    growth = [(p, order) for p, order in _require_probes(data) if p.key in keys]
    if not growth:
        raise PlotUnavailable(f"job {data.job_id} has no growth probe measurements yet")
    symbol = _symbol(order_kind(data))
    figure, _ = _figure()
    ax = figure.subplots()
    everything: list[float] = []
    x_max = 0.0
    for i, (probe, order) in enumerate(growth):
        x = [t * order.effective_rate for t in order.epoch]
        everything.extend(order.value)
        x_max = max(x_max, *x)
        ax.plot(x, order.value, color=f"C{i % 10}", marker=".", markersize=4, label=_label(probe))
    edge = data.recommendation.edge if data.recommendation is not None else None
    k = edge.k.value if edge is not None and edge.k is not None else None
    y0 = edge.initial if edge is not None else None
    if k is not None and y0 is not None:
        ax.plot(
            [0, x_max],
            [y0, y0 + k * x_max],
            color="black",
            linewidth=1.5,
            alpha=0.7,
            label=f"growth law {symbol} = {symbol}₀ + k·x, k = {k:.3g}",
        )
    _edge_line(ax)
    _fit_y_axis(ax, everything)
    ax.set_xlabel("x = t·η/((1−α)B)   (t: training time in epochs)")
    ax.set_ylabel(f"order parameter {symbol}")
    ax.set_title(
        f"Collapse: each growth probe's {symbol} against t·η/((1−α)B); "
        "the growth law predicts one common line",
        fontsize="medium",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return figure


def _growth_points(result: Recommendation) -> list[tuple[ProbeGrowth, float]]:
    """The probes with a positive fitted growth rate, each with its effective rate."""
    return [
        (p, p.effective_rate)
        for p in result.edge.probes
        if p.growth is not None and (p.growth.A.value or 0) > 0 and p.effective_rate is not None
    ]


def _growth_law_band(ax: Axes, result: Recommendation, lo: float, hi: float) -> None:
    k = result.edge.k
    if k is None or k.value is None:
        return
    grid = [lo * (hi / lo) ** (i / 50) for i in range(51)]
    ax.plot(grid, [k.value * g for g in grid], color="black", label=f"A = k·x, k = {k.value:.3g}")
    if k.low is not None and k.high is not None:
        ax.fill_between(
            grid,
            [k.low * g for g in grid],
            [k.high * g for g in grid],
            color="black",
            alpha=0.12,
            label=f"95% interval of k: [{k.low:.3g}, {k.high:.3g}]",
        )


def plot_growth(data: PlotData) -> Figure:
    result, hyper = _require_recommendation(data)
    points = _growth_points(result)
    if not points:
        raise PlotUnavailable(f"job {data.job_id} fitted no positive growth rates")
    shown = {p.key for p, _ in points}
    left_out = [p.key for p in result.edge.probes if p.key not in shown]
    figure, _ = _figure()
    ax = figure.subplots()
    for i, (probe, x) in enumerate(points):
        assert probe.growth is not None
        a = probe.growth.A
        value = a.value or 0.0  # positive: _growth_points keeps only those
        low = value - a.low if a.low is not None else 0.0
        high = a.high - value if a.high is not None else 0.0
        ax.errorbar(
            [x],
            [value],
            yerr=[[max(low, 0.0)], [max(high, 0.0)]],
            fmt="o",
            color=f"C{i % 10}",
            capsize=3,
            label=_probe_label(probe.key, probe.model_dump()),
        )
    run_x = hyper.effective_rate
    span = [x for _, x in points] + ([run_x] if run_x else [])
    lo, hi = min(span) / 1.5, max(span) * 1.5
    _growth_law_band(ax, result, lo, hi)
    a_run = result.edge.growth_rate_per_epoch
    if run_x and a_run is not None and a_run.value is not None and a_run.value > 0:
        ax.plot(
            [run_x],
            [a_run.value],
            marker="*",
            markersize=14,
            color="#c0392b",
            linestyle="none",
            label="recommended run (predicted)",
        )
    if left_out:
        ax.text(
            0.98,
            0.03,
            f"not shown (no positive growth rate fitted): {', '.join(left_out)}",
            transform=ax.transAxes,
            ha="right",
            fontsize="small",
            color="dimgrey",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("effective learning rate x = η/((1−α)B)   (per example)")
    ax.set_ylabel("growth rate A of the order parameter (per epoch)")
    title = "Growth rate against η/((1−α)B): the scaling law A = k·x"
    scaling = result.edge.scaling
    if scaling is not None and not scaling.theory_consistent:
        title += "\n(a fitted exponent differs from 1: the law is only approximate here)"
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="upper left")
    return figure


def _edge_time(ax: Axes, t_edge: float | None, end: float) -> None:
    # Within 1 % of the end is "at the end" (the engine aims the edge at the last epoch), as the
    # dashboard says too.
    if t_edge is not None and 0 < t_edge <= end * 1.01:
        ax.axvline(
            min(t_edge, end),
            color="grey",
            linestyle=":",
            label=f"edge reached at {min(t_edge, end):.3g} epochs",
        )
    elif t_edge is not None and t_edge > end:
        ax.text(
            0.98,
            0.05,
            f"edge predicted only after {t_edge:.3g} epochs (beyond this run)",
            transform=ax.transAxes,
            ha="right",
            fontsize="small",
            color="grey",
        )


def plot_trajectory(data: PlotData) -> Figure:
    result, hyper = _require_recommendation(data)
    edge = result.edge
    symbol = _symbol(order_kind(data))
    epochs = edge.predicted_trajectory.epoch if edge.predicted_trajectory else []
    values = list(edge.predicted_trajectory.value if edge.predicted_trajectory else [])
    figure, _ = _figure()
    ax = figure.subplots()
    ax.plot(
        epochs,
        values,
        color="C0",
        linewidth=2,
        label=(
            f"predicted: η={hyper.learning_rate:.3g}, α={hyper.momentum:g}, "
            f"B={hyper.batch_size}, wd={hyper.weight_decay:.2g}"
        ),
    )
    verification = result.verification.trajectory if result.verification else None
    if verification is not None and verification.epoch:
        values.extend(verification.measured)
        ax.plot(
            verification.epoch,
            verification.measured,
            color="C1",
            marker=".",
            label="measured in the verification run",
        )
    for i, run in enumerate(data.measured):
        points = [(p.epoch, p.value) for p in run.points if p.epoch is not None]
        if points:
            values.extend(v for _, v in points)
            ax.plot(
                [t for t, _ in points],
                [v for _, v in points],
                color=f"C{(i + 2) % 10}",
                linestyle=":",
                marker=".",
                label=f"measured in your run '{run.run}' (edgetune.monitor)",
            )
    _edge_line(ax)
    end = max(epochs, default=0.0)
    _edge_time(ax, edge.predicted_edge_epoch, end)
    _fit_y_axis(ax, values)
    ax.set_xlim(0, end or None)
    ax.set_xlabel("training time (epochs)")
    ax.set_ylabel(f"order parameter {symbol}")
    ax.set_title(f"Recommended run: predicted {symbol} over {hyper.epochs:g} epochs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return figure


def _compared(job: JobTrajectory) -> tuple[Recommendation, Hyperparameters] | str:
    """The job's result and hyperparameters when it has a trajectory to show, else why not."""
    result = job.recommendation
    if result is None:
        return f"{job.job_id[:8]} ({job.status}, no recommendation)"
    if result.hyperparameters is None or not result.edge.predicted_trajectory:
        return f"{job.job_id[:8]} (no recommendation reached the edge)"
    return result, result.hyperparameters


def _compare_label(job: JobTrajectory, hyper: Hyperparameters, symbol: str | None) -> str:
    """Id, model · dataset, the hyperparameters; the order parameter only where jobs differ."""
    label = (
        f"{job.job_id[:8]} {job.title}: η={hyper.learning_rate:.3g}, "
        f"α={hyper.momentum:g}, B={hyper.batch_size}, {hyper.epochs:g} epochs"
    )
    return label if symbol is None else f"{label} ({symbol})"


def plot_compare(jobs: Sequence[JobTrajectory]) -> Figure:
    """Each job's recommended run, its predicted order parameter over its epochs (solid) and,
    where it was verified, the measured one (dotted, same colour). Jobs without a trajectory are
    named in a note; PlotUnavailable when none has one."""
    shown = [(job, c) for job in jobs if not isinstance(c := _compared(job), str)]
    left_out = [c for job in jobs if isinstance(c := _compared(job), str)]
    if not shown:
        raise PlotUnavailable("no job to compare has a recommended run: " + ", ".join(left_out))
    kinds = {result.edge.order_parameter.name for _, (result, _) in shown}
    figure, _ = _figure()
    ax = figure.subplots()
    everything: list[float] = []
    end = 0.0
    for i, (job, (result, hyper)) in enumerate(shown):
        predicted = result.edge.predicted_trajectory
        assert predicted is not None  # _compared keeps only jobs that have one
        symbol = _symbol(result.edge.order_parameter.name) if len(kinds) > 1 else None
        label = _compare_label(job, hyper, symbol)
        ax.plot(predicted.epoch, predicted.value, color=f"C{i}", linewidth=2, label=label)
        everything.extend(predicted.value)
        end = max(end, *predicted.epoch)
        measured = result.verification.trajectory if result.verification else None
        if measured is not None and measured.epoch:
            ax.plot(measured.epoch, measured.measured, color=f"C{i}", linestyle=":", marker=".")
            everything.extend(measured.measured)
    _edge_line(ax)
    _fit_y_axis(ax, everything)
    ax.set_xlim(0, end or None)
    ax.set_xlabel("training time (epochs)")
    # J² and χ both put the edge at 1, so jobs that steer different ones share the axis.
    ax.set_ylabel(
        f"order parameter {_symbol(next(iter(kinds)))}" if len(kinds) == 1 else "order parameter"
    )
    ax.set_title(
        "Recommended runs compared: predicted order parameter (dotted: measured in verification)",
        fontsize="medium",
    )
    if left_out:
        ax.text(
            0.98,
            0.03,
            f"not shown: {', '.join(left_out)}",
            transform=ax.transAxes,
            ha="right",
            fontsize="small",
            color="dimgrey",
        )
    ax.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=1, fontsize="small")
    return figure


PLOTTERS = {
    "order": plot_order,
    "collapse": plot_collapse,
    "growth": plot_growth,
    "trajectory": plot_trajectory,
}


def render(name: PlotName, data: PlotData, format: Format = "png") -> bytes:
    """The plot as PNG (800×500) or SVG bytes; PlotUnavailable when the job lacks its data."""
    return _encode(PLOTTERS[name](data), format)


def render_compare(jobs: Sequence[JobTrajectory], format: Format = "png") -> bytes:
    """The compare plot as PNG (800×500) or SVG bytes; PlotUnavailable when no job has a
    recommended run to show."""
    return _encode(plot_compare(jobs), format)


def _encode(figure: Figure, format: Format) -> bytes:
    buffer = io.BytesIO()
    # No timestamps in the files: the same data gives the same bytes.
    metadata = {"Date": None} if format == "svg" else {"Software": None}
    # A fixed salt for the SVG's element ids (random otherwise). rc_context touches global
    # settings, but every thread sets the same value.
    with rc_context({"svg.hashsalt": "edgetune"}):
        figure.savefig(buffer, format=format, dpi=DPI, metadata=metadata)
    return buffer.getvalue()
