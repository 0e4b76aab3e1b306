"""The network's APJN in training, where J is a gauge (BatchNorm) and where it is not (issue 12).

Under BatchNorm a convolution's function does not change with the scale of its weights, so J,
the order parameter the growth law steers on MLPs, measures nothing the network does. The
network's APJN (`worker.order.network_apjn`, input to logits) is a property of the function, the
scale-invariant quantity. This study trains a suite case's network at momentum 0.9 and the
suite's four learning rates, one population, its own data split and the suite's seed, and reads
at 12 points of the run: J of the fastest layer, the network's APJN (32 fixed training examples,
8 fixed random directions) and the training loss; at the end, validation accuracy. Per rate it
fits the APJN's growth over the run (`worker.fit.fit_growth`, transient detected) and prints the
η exponent between neighbouring rates, beside the suite grid's test accuracy for the same
configuration. Writes benchmarks/results/network_order_<device>.json with the command, git
revision and machine. A claim about these networks and data only.

    .venv/bin/python benchmarks/network_order.py [--cases fmnist-resnet18-3ep,fmnist-cnn-small-5ep]
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from typing import Any

import torch

from benchmarks.recommend_fmnist import accuracy
from benchmarks.suite import (
    LEARNING_RATES,
    OUT_DIR,
    REGISTRY,
    calling_population,
    case_study,
    epoch_steps,
    read_json,
)
from worker import fit
from worker.data import Dataset
from worker.order import network_apjn, random_unit_vectors
from worker.probe import (
    ProbeConfig,
    ProbeProgress,
    ProbeResult,
    init_model,
    run_population,
)

CASES = ("fmnist-resnet18-3ep", "fmnist-cnn-small-5ep")
MOMENTUM = 0.9
READS = 12
EXAMPLES = 32
VECTORS = 8


class _Reader:
    """At each read step, every live member's network APJN, from run_population's `on_progress`
    (the population's weights, as benchmarks/suite.py's _Tap reads them)."""

    def __init__(
        self, model: torch.nn.Module, x: torch.Tensor, vectors: torch.Tensor, steps: set[int]
    ):
        self.model, self.x, self.vectors, self.steps = model, x, vectors, steps
        self.reads: dict[tuple[int, int], float] = {}

    def __call__(self, progress: ProbeProgress) -> bool:
        if progress.step not in self.steps:
            return True
        pop = calling_population(inspect.currentframe())
        for position, member in enumerate(pop.members):
            params = pop.member_params(position)
            value = network_apjn(self.model, params, self.x, self.vectors)
            self.reads[(member, progress.step)] = float(value)
        return True


def run_case(name: str, data: Dataset, device: torch.device) -> dict[str, Any]:
    case = REGISTRY[name]
    steps = epoch_steps(data, case.batch_size, case.epochs)
    every = max(1, steps // READS)
    configs = [ProbeConfig(lr, MOMENTUM, 0.0, case.batch_size, 0, steps) for lr in LEARNING_RATES]
    model = init_model(case.model, data, 0).to(device)
    x = data.x_train[:EXAMPLES]
    with torch.no_grad():
        n_out = model(x).shape[1]
    generator = torch.Generator().manual_seed(0)
    vectors = random_unit_vectors(VECTORS, EXAMPLES, (n_out,), generator, device)
    read_steps = {0, *range(every, steps + 1, every), steps}
    reader = _Reader(model, x, vectors, read_steps)
    start = time.perf_counter()
    results = run_population(
        case.model,
        data,
        configs,
        device=device,
        measure_every=every,
        eval_every=0,
        on_progress=reader,
        keep_params=True,
    )
    wall = time.perf_counter() - start
    grid = read_json(OUT_DIR / (case.runs_from or name) / "grid.json")
    runs = [
        _run_summary(case.model, data, member, r, reader, grid, device)
        for member, r in enumerate(results)
    ]
    return {
        "about": case.about,
        "batch_size": case.batch_size,
        "epochs": case.epochs,
        "momentum": MOMENTUM,
        "runs": runs,
        "exponents": _exponents(runs),
        "training_wall_s": wall,
    }


def _run_summary(
    model_spec: Any,
    data: Dataset,
    member: int,
    r: ProbeResult,
    reader: _Reader,
    grid: dict[str, Any] | None,
    device: torch.device,
) -> dict[str, Any]:
    by_step = {rec.step: rec for rec in r.records}
    points = [
        {
            "step": step,
            "epoch": by_step[step].epoch,
            "J_max": max(by_step[step].J),
            "network_apjn": reader.reads[(member, step)],
            "train_loss": by_step[step].train_loss,
        }
        for step in sorted(reader.steps)
        if (member, step) in reader.reads and step in by_step
    ]
    final = r.records[-1]
    if r.params and (not points or points[-1]["step"] < final.step):
        # The population reads only its live members, and a finished one has left it: its last
        # point comes from the weights it ended with.
        value = float(network_apjn(reader.model, r.params, reader.x, reader.vectors))
        points.append(
            {
                "step": final.step,
                "epoch": final.epoch,
                "J_max": max(final.J),
                "network_apjn": value,
                "train_loss": final.train_loss,
            }
        )
    growth: dict[str, Any] | None = None
    t, y = [p["epoch"] for p in points], [p["network_apjn"] for p in points]
    try:
        g = fit.fit_growth(t, y, t_min=fit.transient_end(t, y), edge=None)
        growth = {
            "A": g.A.value,
            "se": g.A.se,
            "r2": g.r2,
            "linear": g.linear,
            "t_start": g.t_start,
            "slope_change": g.slope_change,
        }
    except fit.FitError as exc:
        growth = {"error": str(exc)}
    val = accuracy(model_spec, data, r, data.x_val, data.y_val, device) if r.params else None
    cell = next(
        (
            c
            for c in (grid or {}).get("configs", [])
            if c["learning_rate"] == r.config.learning_rate and c["momentum"] == r.config.momentum
        ),
        None,
    )
    return {
        "learning_rate": r.config.learning_rate,
        "outcome": r.outcome,
        "points": points,
        "apjn_growth": growth,
        "val_accuracy": val,
        "grid_test_accuracy": cell["reads"][-1]["test_accuracy"] if cell else None,
    }


def _exponents(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """A ∝ η^a between neighbouring rates, where both grew."""
    out = []
    for lo, hi in zip(runs, runs[1:], strict=False):
        a_lo, a_hi = (r["apjn_growth"].get("A") for r in (lo, hi))
        if a_lo and a_hi and a_lo > 0 and a_hi > 0:
            span = math.log(hi["learning_rate"] / lo["learning_rate"])
            out.append(
                {
                    "from": lo["learning_rate"],
                    "to": hi["learning_rate"],
                    "exponent": math.log(a_hi / a_lo) / span,
                }
            )
    return out


def print_case(name: str, c: dict[str, Any]) -> None:
    print(f"{name}: {c['about']}, momentum {c['momentum']}")
    for r in c["runs"]:
        first, last = r["points"][0], r["points"][-1]
        g = r["apjn_growth"]
        slope = f"{g['A']:.3g} ± {g['se']:.2g}/epoch" if "A" in g else g["error"]
        grid = r["grid_test_accuracy"]
        print(
            f"  η {r['learning_rate']:<6g} J {first['J_max']:.3f} → {last['J_max']:.3f}   "
            f"APJN {first['network_apjn']:.4g} → {last['network_apjn']:.4g} ({slope})   "
            f"val {r['val_accuracy'] or float('nan'):.4f}   grid test "
            f"{'-' if grid is None else f'{grid:.4f}'}"
        )
    for e in c["exponents"]:
        print(f"  APJN growth ∝ η^{e['exponent']:.2f} between η {e['from']:g} and {e['to']:g}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return case_study(
        argv,
        doc=__doc__ or "",
        benchmark="network_order",
        cases=CASES,
        run=lambda name, data, _args, device: run_case(name, data, device),
        show=print_case,
    )


if __name__ == "__main__":
    sys.exit(main())
