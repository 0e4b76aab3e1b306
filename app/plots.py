"""A job's plots, drawn from its stored probe records and recommendation (matplotlib, no display).

    order       the order parameter of each hidden layer against epochs, one line per probe
    collapse    the growth probes' order parameter against t·η/((1−α)B): one line below the edge
    growth      fitted growth rate A against η/((1−α)B), log–log, with the fit A = k·x and its CI
    trajectory  the recommended run's predicted trajectory (and the verification run's, if any)

`render(name, data, format)` is pure: values in, PNG or SVG bytes out. It uses matplotlib's
object API (a Figure per call, never pyplot's global state), so requests can render in parallel
threads. The only database access is `load`, through the service's own reads.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Literal

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sqlalchemy.orm import Session

from app import queue, service
from app.errors import ProblemError

PlotName = Literal["order", "collapse", "growth", "trajectory"]
Format = Literal["png", "svg"]
PLOT_NAMES: tuple[PlotName, ...] = ("order", "collapse", "growth", "trajectory")
MEDIA_TYPES: dict[Format, str] = {"png": "image/png", "svg": "image/svg+xml"}
# 800 × 500 pixels as PNG.
SIZE_INCHES = (8.0, 5.0)
DPI = 100
EDGE = 1.0
EDGE_STYLE: dict[str, Any] = {"color": "#c0392b", "linestyle": "--", "linewidth": 1.2}
# Panels of the order plot; deeper networks show their first and last layers.
MAX_LAYER_PANELS = 4
# Above this the order parameter has run far past the edge: a log axis keeps the rest readable.
LOG_SCALE_ABOVE = 5.0

OrderKind = Literal["J2", "chi"]


class PlotUnavailable(Exception):
    """The job has not (yet) produced the data this plot needs."""


@dataclass(frozen=True)
class PlotData:
    job_id: str
    status: str
    spec: dict[str, Any]
    # ProbeOut-shaped: key, config (learning_rate, momentum, weight_decay, batch_size), outcome,
    # records (step, epoch, J, chi, lyapunov, ...)
    probes: list[dict[str, Any]]
    recommendation: dict[str, Any] | None


def load(session: Session, *, job_id: str, tenant: str) -> PlotData:
    """The job's spec, probes and recommendation (404 problem for another tenant's job)."""
    job = service.get_job(session, job_id=job_id, tenant=tenant)
    probes = service.get_probes(session, job_id=job_id, tenant=tenant).probes
    recommendation = (
        queue.get_recommendation(session, job_id) if job.status == "succeeded" else None
    )
    return PlotData(
        job.id,
        job.status,
        job.spec,
        [p.model_dump(mode="json") for p in probes],
        recommendation,
    )


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
    chosen = format or suffix or "png"
    if chosen not in MEDIA_TYPES:
        raise ProblemError(
            400,
            "Unknown plot format",
            f"format must be png or svg, not {chosen!r}",
            "invalid-format",
        )
    return base, chosen  # both checked against the literals above


def order_kind(data: PlotData) -> OrderKind:
    """The recommendation's order parameter; before there is one, the worker's rule from the spec
    (J² for one tanh hidden layer or a torchvision model, χ otherwise)."""
    if data.recommendation:
        name = ((data.recommendation.get("edge") or {}).get("order_parameter") or {}).get("name")
        if name in ("J2", "chi"):
            return name
    model = data.spec.get("model") or {}
    if model.get("type") == "torchvision":
        return "J2"
    if model.get("type") == "mlp" and len(model.get("hidden") or []) == 1:
        return "J2" if model.get("activation", "tanh") == "tanh" else "chi"
    return "chi"


def _symbol(kind: OrderKind) -> str:
    return "J²" if kind == "J2" else "χ"


def _layer_values(record: dict[str, Any], kind: OrderKind) -> list[float]:
    if kind == "chi" and record.get("chi"):
        return [float(v) for v in record["chi"]]
    return [float(j) ** 2 for j in record.get("J") or []]


def _series_value(record: dict[str, Any], kind: OrderKind) -> float:
    """The order parameter the fits use: mean J² over layers, or χ = exp(2·mean Lyapunov)."""
    if kind == "chi" and record.get("lyapunov") is not None:
        return math.exp(2 * float(record["lyapunov"]))
    values = [float(j) ** 2 for j in record.get("J") or []]
    return sum(values) / len(values) if values else math.nan


def _probe_label(probe: dict[str, Any]) -> str:
    c = probe.get("config") or {}
    label = (
        f"{probe.get('key', '?')}: η={c.get('learning_rate', 0):.3g}, "
        f"α={c.get('momentum', 0):g}, B={c.get('batch_size', '?')}"
    )
    if c.get("weight_decay"):
        label += f", wd={c['weight_decay']:.2g}"
    if probe.get("outcome") == "diverged":
        label += " (diverged)"
    return label


def _effective_rate(config: dict[str, Any]) -> float:
    """η/((1−α)B), the one combination the growth law depends on."""
    return float(config["learning_rate"]) / (
        (1 - float(config["momentum"])) * float(config["batch_size"])
    )


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
    listed = ((data.recommendation or {}).get("edge") or {}).get("probes")
    if listed:
        return [p["key"] for p in listed]
    return [p["key"] for p in data.probes if not (p.get("config") or {}).get("weight_decay")]


def _require_probes(data: PlotData) -> list[dict[str, Any]]:
    measured = [p for p in data.probes if p.get("records")]
    if not measured:
        raise PlotUnavailable(
            f"job {data.job_id} is {data.status} and has no probe measurements yet"
        )
    return measured


def _require_recommendation(data: PlotData) -> dict[str, Any]:
    if data.recommendation is None:
        raise PlotUnavailable(f"job {data.job_id} is {data.status}: there is no recommendation yet")
    if data.recommendation.get("hyperparameters") is None:
        reason = (data.recommendation.get("validity") or {}).get("reason", "no reason given")
        raise PlotUnavailable(f"job {data.job_id} made no recommendation: {reason}")
    return data.recommendation


def plot_order(data: PlotData) -> Figure:
    probes = _require_probes(data)
    kind = order_kind(data)
    symbol = _symbol(kind)
    layers = max(len(_layer_values(p["records"][0], kind)) for p in probes)
    shown = list(range(layers))
    if layers > MAX_LAYER_PANELS:
        shown = [*range(MAX_LAYER_PANELS - 1), layers - 1]
    figure, _ = _figure()
    # One panel per layer, two panels to a row, so that each keeps a readable width.
    columns = min(len(shown), 2)
    rows = math.ceil(len(shown) / columns)
    grid = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    axes = list(grid.flat)
    for extra in axes[len(shown) :]:
        extra.set_visible(False)
    everything: list[float] = []
    for panel, (ax, layer) in enumerate(zip(axes, shown, strict=False)):
        for i, probe in enumerate(probes):
            t = [float(r["epoch"]) for r in probe["records"]]
            y = [
                values[layer] if layer < len(values) else math.nan
                for values in (_layer_values(r, kind) for r in probe["records"])
            ]
            everything.extend(y)
            ax.plot(
                t,
                y,
                color=f"C{i % 10}",
                linestyle=":" if (probe.get("config") or {}).get("weight_decay") else "-",
                marker="." if len(t) < 15 else None,
                label=_probe_label(probe) if panel == 0 else None,
            )
        _edge_line(ax, label=panel == 0)
        ax.set_title(f"hidden layer {layer + 1}", fontsize="medium")
        ax.grid(alpha=0.3)
        if panel + columns >= len(shown):  # the lowest panel of its column
            ax.set_xlabel("training time (epochs)")
            ax.xaxis.set_tick_params(labelbottom=True)
    _fit_y_axis(axes[0], everything)
    figure.supylabel(
        f"order parameter {symbol}" + ("  (J² = fan_in·var W)" if kind == "J2" else ""),
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
    probes = _require_probes(data)
    kind = order_kind(data)
    symbol = _symbol(kind)
    keys = set(_growth_keys(data))
    growth = [p for p in probes if p["key"] in keys]
    if not growth:
        raise PlotUnavailable(f"job {data.job_id} has no growth probe measurements yet")
    figure, _ = _figure()
    ax = figure.subplots()
    everything: list[float] = []
    x_max = 0.0
    for i, probe in enumerate(growth):
        rate = _effective_rate(probe["config"])
        x = [float(r["epoch"]) * rate for r in probe["records"]]
        y = [_series_value(r, kind) for r in probe["records"]]
        everything.extend(y)
        x_max = max(x_max, *x)
        ax.plot(x, y, color=f"C{i % 10}", marker=".", markersize=4, label=_probe_label(probe))
    edge = ((data.recommendation or {}).get("edge")) or {}
    k = (edge.get("k") or {}).get("value")
    y0 = edge.get("initial")
    if isinstance(k, int | float) and isinstance(y0, int | float):
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


def plot_growth(data: PlotData) -> Figure:
    result = _require_recommendation(data)
    edge = result.get("edge") or {}
    listed = edge.get("probes") or []
    points = [
        (p, p["growth"]["A"])
        for p in listed
        if ((p.get("growth") or {}).get("A") or {}).get("value", 0) > 0
    ]
    left_out = [p["key"] for p in listed if all(p is not q for q, _ in points)]
    if not points:
        raise PlotUnavailable(f"job {data.job_id} fitted no positive growth rates")
    figure, _ = _figure()
    ax = figure.subplots()
    xs = []
    for i, (probe, a) in enumerate(points):
        x = _effective_rate(probe)
        xs.append(x)
        low = a["value"] - a["low"] if a.get("low") is not None else 0.0
        high = a["high"] - a["value"] if a.get("high") is not None else 0.0
        ax.errorbar(
            [x],
            [a["value"]],
            yerr=[[max(low, 0.0)], [max(high, 0.0)]],
            fmt="o",
            color=f"C{i % 10}",
            capsize=3,
            label=_probe_label({"key": probe["key"], "config": probe}),
        )
    hyper = result.get("hyperparameters") or {}
    run_x = _effective_rate(hyper) if hyper else None
    span = [*xs, *([run_x] if run_x else [])]
    lo, hi = min(span) / 1.5, max(span) * 1.5
    k = edge.get("k") or {}
    if isinstance(k.get("value"), int | float):
        grid = [lo * (hi / lo) ** (i / 50) for i in range(51)]
        ax.plot(
            grid,
            [k["value"] * g for g in grid],
            color="black",
            label=f"A = k·x, k = {k['value']:.3g}",
        )
        if isinstance(k.get("low"), int | float) and isinstance(k.get("high"), int | float):
            ax.fill_between(
                grid,
                [k["low"] * g for g in grid],
                [k["high"] * g for g in grid],
                color="black",
                alpha=0.12,
                label=f"95% interval of k: [{k['low']:.3g}, {k['high']:.3g}]",
            )
    a_run = (edge.get("growth_rate_per_epoch") or {}).get("value")
    if run_x and isinstance(a_run, int | float) and a_run > 0:
        ax.plot(
            [run_x],
            [a_run],
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
    if (edge.get("scaling") or {}).get("theory_consistent") is False:
        title += "\n(a fitted exponent differs from 1: the law is only approximate here)"
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="upper left")
    return figure


def plot_trajectory(data: PlotData) -> Figure:
    result = _require_recommendation(data)
    edge = result.get("edge") or {}
    kind = order_kind(data)
    symbol = _symbol(kind)
    predicted = edge.get("predicted_trajectory") or {}
    hyper = result["hyperparameters"]
    figure, _ = _figure()
    ax = figure.subplots()
    values = list(predicted.get("value") or [])
    ax.plot(
        predicted.get("epoch") or [],
        values,
        color="C0",
        linewidth=2,
        label=(
            f"predicted: η={hyper['learning_rate']:.3g}, α={hyper['momentum']:g}, "
            f"B={hyper['batch_size']}, wd={hyper['weight_decay']:.2g}"
        ),
    )
    verification = (result.get("verification") or {}).get("trajectory") or {}
    if verification.get("epoch"):
        measured = verification.get("measured") or []
        values.extend(measured)
        ax.plot(
            verification["epoch"],
            measured,
            color="C1",
            marker=".",
            label="measured in the verification run",
        )
    _edge_line(ax)
    t_edge = edge.get("predicted_edge_epoch")
    end = max(predicted.get("epoch") or [0.0])
    if isinstance(t_edge, int | float) and 0 < t_edge <= end:
        ax.axvline(
            t_edge, color="grey", linestyle=":", label=f"edge reached at {t_edge:.2g} epochs"
        )
    elif isinstance(t_edge, int | float) and t_edge > end:
        ax.text(
            0.98,
            0.05,
            f"edge predicted only after {t_edge:.3g} epochs (beyond this run)",
            transform=ax.transAxes,
            ha="right",
            fontsize="small",
            color="grey",
        )
    _fit_y_axis(ax, values)
    ax.set_xlim(0, end or None)
    ax.set_xlabel("training time (epochs)")
    ax.set_ylabel(f"order parameter {symbol}")
    ax.set_title(f"Recommended run: predicted {symbol} over {hyper['epochs']:g} epochs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return figure


PLOTTERS = {
    "order": plot_order,
    "collapse": plot_collapse,
    "growth": plot_growth,
    "trajectory": plot_trajectory,
}


def render(name: PlotName, data: PlotData, format: Format = "png") -> bytes:
    """The plot as PNG (800×500) or SVG bytes; PlotUnavailable when the job lacks its data."""
    figure = PLOTTERS[name](data)
    buffer = io.BytesIO()
    # No timestamps in the files: the same data gives the same bytes.
    metadata = {"Date": None} if format == "svg" else {"Software": None}
    # A fixed salt for the SVG's element ids (random otherwise). rc_context touches global
    # settings, but every thread sets the same value.
    with rc_context({"svg.hashsalt": "edgetune"}):
        figure.savefig(buffer, format=format, dpi=DPI, metadata=metadata)
    return buffer.getvalue()
