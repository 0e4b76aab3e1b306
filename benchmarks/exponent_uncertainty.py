"""Are the growth rates' and the η exponent's intervals honest? Seed replicates decide (issue 12).

The engine fits each probe's growth rate A on one series and its η exponent from two probes
(η·½ and η·2 of the prior's target). An interval is honest when it is as wide as what changes
from one seed to the next. This study runs the engine's own probe plan (`worker.recommend.run`,
the suite's spec) with many seeds: each seed gives its probes a new initialisation and data
order, on one data split. It stores every probe's order-parameter series, so fits can be redone
offline. `--merge` refits each series with every interval method in `METHODS` and prints, per case
and quantity:
- the seed-to-seed standard deviation;
- the median of the reported standard errors (calibration = reported / seed sd; 1 is honest);
- the coverage of the 95 % intervals: how often a seed's interval holds the mean of the other seeds;
- the direct test of the fitted η exponent: a third probe at twice the lower probe's rate, whose
  measured A(2η)/A(η) is set against 2^a from the outer two, and against theory's 2.

    .venv/bin/python benchmarks/exponent_uncertainty.py --cases fmnist-paper-20ep --seeds 0-15
    .venv/bin/python benchmarks/exponent_uncertainty.py --merge

Parts live in benchmarks/results/exponent_uncertainty/<case>/seed<NN>.json (skipped when
present: resumable, and splittable over cores by --cases and --seeds); the merge writes
benchmarks/results/exponent_uncertainty_<device>.json with the command, git revision and machine.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.recommend_fmnist import timed_engine_run
from benchmarks.suite import REGISTRY, case_spec, provenance, read_json, study_arguments, write_json
from edgetune.schemas import RecommendationSpec
from worker import fit, recommend
from worker.data import Dataset, load_dataset
from worker.law import OrderKind, order_kind, order_series
from worker.plan import PlannedProbe, plan_probes
from worker.probe import pick_device, run_population

RESULTS = Path(__file__).parent / "results"
PARTS = RESULTS / "exponent_uncertainty"
# Every MLP family the suite answers with a growth law (resnet18 is refused; the CNNs below).
CASES = (
    "fmnist-paper-20ep",
    "fmnist-paper-3ep-10k",
    "fmnist-relu-512x2-10ep",
    "fmnist-gelu-256x2-10ep-20k",
    "mnist-tanh-512x2-10ep",
    "digits-mlp64-10ep",
)
# The CNNs: the engine steers χ there and χ does not grow (science.md §6); what this study measures
# on them is the growth of J², every layer's J² being recorded by every probe. Kaiming-ReLU nets
# start at J² = 2, above the tanh edge of 1, and ReLU has no chaotic phase: no edge cut for them.
MEASURED_KIND: dict[str, OrderKind] = {"fmnist-cnn-small-5ep": "J2", "digits-cnn-10ep": "J2"}
CNN_CASES = tuple(MEASURED_KIND)
METHODS: tuple[fit.Uncertainty, ...] = ("lag1", "bootstrap")
Z95 = 1.959963984540054
MIDDLE_SEED_OFFSET = 1000  # the middle probe's seed, beyond any the plan gives
MIDDLE_FACTOR = 2.0  # its rate over the lower growth probe's (the 4× bracket's geometric middle)


def seed_range(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def run_seed(
    name: str, seed: int, data: Dataset, device: torch.device, stored: dict[str, Any] | None
) -> dict[str, Any]:
    """The engine's plan at this seed: every probe's series and the engine's own answer, and
    the middle probe. A part stored before the middle probe existed gets only that."""
    spec = case_spec(REGISTRY[name]).model_copy(update={"seed": seed})
    if stored is not None:
        plan = plan_probes(spec, data)
        middle = middle_probe(spec, data, plan, device, stored["order_parameter"])
        return stored | {"middle": middle}
    run = timed_engine_run(spec, data, device)
    kind = MEASURED_KIND.get(name, order_kind(spec))
    probes = []
    for p in run.plan:
        result = run.results[p.key]
        t, y = order_series(result.records, kind)
        probes.append(
            {
                "key": p.key,
                "purpose": p.purpose,
                "learning_rate": p.config.learning_rate,
                "momentum": p.config.momentum,
                "batch_size": p.config.batch_size,
                "outcome": result.outcome,
                "t": [float(v) for v in t],
                "y": [float(v) for v in y],
            }
        )
    hyper = run.recommendation.hyperparameters
    return {
        "case": name,
        "seed": seed,
        "order_parameter": kind,
        "probes": probes,
        "middle": middle_probe(spec, data, run.plan, device, kind),
        "learning_rate": hyper.learning_rate if hyper else None,
        "probe_wall_s": run.probe_wall,
    }


def middle_probe(
    spec: RecommendationSpec,
    data: Dataset,
    plan: list[PlannedProbe],
    device: torch.device,
    kind: OrderKind,
) -> dict[str, Any] | None:
    """The direct test of the fitted exponent: one more probe at twice the lower growth probe's
    rate (the geometric middle of the 4× bracket, where the engine's answers land), at the same
    τ and measurement cadence as the plan's, with a seed of its own. A(2η)/A(η) measured there
    is compared with 2^a from the outer two (`analyse`). Not part of the engine's plan."""
    growth_probes = sorted((p for p in plan if p.purpose == "growth"),
                           key=lambda p: p.config.learning_rate)
    if len(growth_probes) != 2:
        return None
    lo, hi = growth_probes
    config = replace(lo.config, learning_rate=MIDDLE_FACTOR * lo.config.learning_rate,
                     seed=lo.config.seed + MIDDLE_SEED_OFFSET,
                     steps=int(lo.config.steps // MIDDLE_FACTOR))
    planned = replace(lo, key="mid", config=config, epochs=lo.epochs / MIDDLE_FACTOR)
    (result,) = run_population(
        spec.model, data, [config], device=device,
        measure_every=recommend.measure_interval([lo.config.steps, hi.config.steps]),
        evaluate_last_only=True,
        stop_when=recommend._stop_rule([planned], kind),
        chi_every_record=kind == "chi",
    )
    t, y = order_series(result.records, kind)
    return {"learning_rate": config.learning_rate, "outcome": result.outcome,
            "t": [float(v) for v in t], "y": [float(v) for v in y]}


# ---------------------------------------------------------------------------------------------
# Refits: what each interval method says about one seed's probes.


def edge_cut(part: dict[str, Any]) -> float | None:
    """Where a case's growth fits stop: below the edge, as the engine's, but nowhere for the
    CNNs' J² (ReLU has no chaotic phase; Kaiming starts at J² = 2)."""
    return None if part["case"] in MEASURED_KIND else 0.9 * fit.EDGE


def growth(
    t: list[float], y: list[float], method: fit.Uncertainty, edge: float | None = 0.9 * fit.EDGE
) -> fit.Estimate | None:
    """The growth rate as the engine fits it (transient detected, cut below `edge`), with the
    standard error `method` gives it."""
    try:
        t_min = fit.transient_end(t, y)
        g = fit.fit_growth(t, y, t_min=t_min, edge=edge, uncertainty=method)
    except fit.FitError:
        return None
    return None if g.chaotic or g.A.value <= 0 else g.A


def exponent(
    lo: dict[str, Any], hi: dict[str, Any], method: fit.Uncertainty, edge: float | None
) -> tuple[float, float] | None:
    """(a, se) of A ∝ η^a between the two growth probes, the se propagated from the growth
    rates' standard errors as the engine's scaling fit does with two probes (dof 0)."""
    a_lo, a_hi = growth(lo["t"], lo["y"], method, edge), growth(hi["t"], hi["y"], method, edge)
    if a_lo is None or a_hi is None:
        return None
    span = math.log(hi["learning_rate"] / lo["learning_rate"])
    value = math.log(a_hi.value / a_lo.value) / span
    se = math.hypot(a_lo.se / a_lo.value, a_hi.se / a_hi.value) / span
    return value, se


def calibration(values: list[float], ses: list[float]) -> dict[str, Any]:
    """Seed sd, median reported se, and leave-one-out coverage of the 95 % intervals."""
    v = np.asarray(values)
    s = np.asarray(ses)
    n = v.size
    others = (v.sum() - v) / (n - 1)
    covered = np.abs(v - others) <= Z95 * s
    sd = float(v.std(ddof=1))
    return {
        "seeds": int(n),
        "mean": float(v.mean()),
        "seed_sd": sd,
        "median_se": float(np.median(s)),
        "calibration": float(np.median(s)) / sd if sd > 0 else None,
        "coverage": float(covered.mean()),
    }


def middle_test(parts: list[dict[str, Any]], method: fit.Uncertainty) -> dict[str, Any] | None:
    """A(2η)/A(η) measured by the middle probe against 2^a from the outer probes' fitted a:
    the ratio's seed mean and sd, and how often the measured A lies in the 95 % interval of the
    prediction (the three fits' standard errors propagated)."""
    measured, predicted, inside = [], [], []
    for part in parts:
        mid = part.get("middle")
        if mid is None:
            continue
        lo, hi = sorted((p for p in part["probes"] if p["purpose"] == "growth"),
                        key=lambda p: p["learning_rate"])
        fits = [growth(p["t"], p["y"], method, edge_cut(part)) for p in (lo, mid, hi)]
        if any(f is None for f in fits):
            continue
        a_lo, a_mid, a_hi = (f for f in fits if f is not None)
        a = math.log(a_hi.value / a_lo.value) / math.log(hi["learning_rate"] / lo["learning_rate"])
        ratio = mid["learning_rate"] / lo["learning_rate"]  # MIDDLE_FACTOR
        measured.append(a_mid.value / a_lo.value)
        predicted.append(ratio**a)
        log_gap = math.log(a_mid.value) - math.log(a_lo.value * ratio**a)
        w = math.log(ratio) / math.log(hi["learning_rate"] / lo["learning_rate"])
        var = ((1 - w) * a_lo.se / a_lo.value) ** 2 + (w * a_hi.se / a_hi.value) ** 2
        inside.append(abs(log_gap) <= Z95 * math.sqrt(var + (a_mid.se / a_mid.value) ** 2))
    if len(measured) < 3:
        return None
    gap = np.log(np.asarray(measured) / np.asarray(predicted))
    return {
        "seeds": len(measured),
        "measured_mean": float(np.mean(measured)),
        "measured_sd": float(np.std(measured, ddof=1)),
        "predicted_mean": float(np.mean(predicted)),
        # Measured / predicted A at the middle: mean over seeds, with its standard error.
        "log_gap_mean": float(gap.mean()),
        "log_gap_se": float(gap.std(ddof=1) / math.sqrt(gap.size)),
        "within_interval": float(np.mean(inside)),
        # The same against theory's exponent 1 (A ∝ η): what the fitted law is compared with.
        "theory_log_gap_mean": float(np.mean(np.log(np.asarray(measured) / MIDDLE_FACTOR))),
    }


def analyse(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": len(parts), "order_parameter": parts[0]["order_parameter"]}
    growth_probes = [p["key"] for p in parts[0]["probes"] if p["purpose"] == "growth"]
    for method in METHODS:
        entry: dict[str, Any] = {}
        for key in growth_probes:
            fits = [growth(p["t"], p["y"], method, edge_cut(part)) for part in parts
                    for p in part["probes"] if p["key"] == key]
            ok = [f for f in fits if f is not None]
            if len(ok) >= 3:
                entry[f"A {key}"] = calibration([f.value for f in ok], [f.se for f in ok])
        if len(growth_probes) == 2:
            exps = []
            for part in parts:
                lo, hi = sorted(
                    (p for p in part["probes"] if p["purpose"] == "growth"),
                    key=lambda p: p["learning_rate"],
                )
                e = exponent(lo, hi, method, edge_cut(part))
                if e is not None:
                    exps.append(e)
            if len(exps) >= 3:
                entry["eta exponent"] = calibration([e[0] for e in exps], [e[1] for e in exps])
        middle = middle_test(parts, method)
        if middle is not None:
            entry["A(2η)/A(η)"] = middle
        out[method] = entry
    rates = [p["learning_rate"] for p in parts if p["learning_rate"]]
    if len(rates) >= 2:
        out["recommended_learning_rate"] = {
            "mean": float(np.mean(rates)),
            "relative_sd": float(np.std(rates, ddof=1) / np.mean(rates)),
        }
    return out


def merge(argv: list[str], device: torch.device) -> dict[str, Any]:
    cases = {}
    for folder in sorted(p for p in PARTS.iterdir() if p.is_dir()):
        parts = [p for f in sorted(folder.glob("seed*.json")) if (p := read_json(f)) is not None]
        if len(parts) >= 3:
            cases[folder.name] = analyse(parts)
    print_table(cases)
    return {"provenance": provenance(device, argv, "benchmarks/exponent_uncertainty.py"),
            "methods": list(METHODS), "cases": cases}


def print_table(cases: dict[str, Any]) -> None:
    print(f"{'case':24s} {'quantity':14s} {'method':9s} {'seeds':>5s} {'mean':>9s} "
          f"{'seed sd':>9s} {'median se':>9s} {'se/sd':>6s} {'cover':>6s}")
    for name, case in cases.items():
        for method in METHODS:
            for quantity, c in case[method].items():
                if quantity == "A(2η)/A(η)":
                    print(f"{name:24s} {quantity:14s} {method:9s} {c['seeds']:5d} measured "
                          f"{c['measured_mean']:.3f} ± {c['measured_sd']:.3f}, predicted 2^a "
                          f"{c['predicted_mean']:.3f}; log gap {c['log_gap_mean']:+.3f} ± "
                          f"{c['log_gap_se']:.3f}; in interval {c['within_interval']:.2f}; "
                          f"theory's 2^1: log gap {c['theory_log_gap_mean']:+.3f}")
                    continue
                ratio = "" if c["calibration"] is None else f"{c['calibration']:.2f}"
                print(f"{name:24s} {quantity:14s} {method:9s} {c['seeds']:5d} {c['mean']:9.4g} "
                      f"{c['seed_sd']:9.3g} {c['median_se']:9.3g} {ratio:>6s} "
                      f"{c['coverage']:6.2f}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", default=",".join(CASES + CNN_CASES), help="comma-separated suite cases"
    )
    parser.add_argument("--seeds", default="0-15", help="a seed or a range, e.g. 0-15")
    parser.add_argument("--merge", action="store_true", help="analyse the stored parts")
    args = study_arguments(parser).parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device()
    if args.merge:
        out = args.out or RESULTS / f"exponent_uncertainty_{device.type}.json"
        write_json(out, merge(argv, device))
        print(f"wrote {out}")
        return 0
    for name in args.cases.split(","):
        data: Dataset | None = None  # loaded once per case, when a seed needs it
        for seed in seed_range(args.seeds):
            path = PARTS / name / f"seed{seed:02d}.json"
            stored = read_json(path)
            if stored is not None and "middle" in stored:
                continue
            if data is None:
                data = load_dataset(REGISTRY[name].dataset, [args.data_root], 0).to(device)
            start = time.perf_counter()
            part = run_seed(name, seed, data, device, stored)
            part["provenance"] = provenance(device, argv, "benchmarks/exponent_uncertainty.py")
            write_json(path, part)
            print(f"{name} seed {seed}: η {part['learning_rate']:.5g}, "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
