"""AdamW's growth law, measured (issue 9): how the order parameter's growth scales with AdamW's
learning rate, batch size and decoupled weight decay.

Two architectures on real Fashion-MNIST, the order parameter the engine steers each by
(worker.law.order_kind: J² of the fastest layer for the paper MLP, χ for the CNN):
  - the paper model (784-784 tanh, J 0.5), full training set;
  - the small CNN of the suite (conv16-pool2-conv32-pool2, ReLU, Kaiming), a 20k subset.
Probes (AdamW, β 0.9/0.999, ε 1e-8), each at 2 seeds:
  - η ∈ ETAS at B 32, no decay, for PROBE_EPOCHS: the exponent a in A ∝ η^a;
  - two of those η at B 128: the exponent b in A ∝ (1/B)^b;
  - one η with decoupled decay WDS: the restoring rate D against the theory's
    D = 2·η·wd·(N/B) per epoch (each step multiplies W by 1 − η·wd, so J² by (1 − η·wd)²).
A per probe is the slope after the transient (worker.fit.transient_end, fit_growth). Exponents
are fitted by least squares on log A over every seed's probe, their 95 % intervals from the
spread of the seed replicates (a seed-pair bootstrap), not from one series.
Writes benchmarks/results/adamw_law_<device>.json (merged over --models runs), each model with the
command, git revision and machine.
A claim about these models and this data only.

    .venv/bin/python benchmarks/adamw_law.py [--threads 1] [--models paper,cnn]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.schemas import (
    BudgetSpec,
    DatasetSpec,
    InitSpec,
    MLPSpec,
    ModelSpec,
    OptimizerSpec,
    RecommendationSpec,
)
from benchmarks.suite import REGISTRY, provenance, read_json, study_arguments, write_json
from worker import fit, law
from worker.data import Dataset, load_dataset
from worker.probe import ProbeConfig, ProbeResult, pick_device, run_population

ETAS = (2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3)
BIG_BATCH_ETAS = (1e-3, 4e-3)
DECAY_ETA = 2e-3
WDS = (0.1, 0.3)
SEEDS = (0, 1)
BOOTSTRAP = 2000
# The suite's small CNN (its case fmnist-cnn-small-5ep), and the same CNN from an edge init below
# χ = 1 (Kaiming puts ReLU nets at χ ≈ 1, where the law that steers χ up to 1 has nothing to steer).
SMALL_CNN = REGISTRY["fmnist-cnn-small-5ep"]
MODELS: dict[str, tuple[ModelSpec, DatasetSpec, float]] = {
    "paper": (MLPSpec(), DatasetSpec(name="fashion-mnist"), 1.0),
    "cnn": (SMALL_CNN.model, SMALL_CNN.dataset, 1.0),
    "cnn-edge": (
        SMALL_CNN.model.model_copy(update={"init": InitSpec(scheme="edge", J=1.0)}),
        SMALL_CNN.dataset,
        1.0,
    ),
    # A seconds-long smoke check of this script (sklearn digits), not part of the claim.
    "digits": (MLPSpec(hidden=[64]), DatasetSpec(name="digits"), 5.0),
}


def run(
    model: ModelSpec, data: Dataset, configs: list[ProbeConfig], device: torch.device
) -> list[ProbeResult]:
    steps = max(c.steps for c in configs)
    return run_population(
        model, data, configs, device=device, measure_every=max(4, steps // 60), eval_every=0
    )


def growth(result: ProbeResult, kind: law.OrderKind) -> dict[str, Any]:
    """The probe's slope A per epoch after its transient, and its series' mean y there."""
    t, y = law.order_series(result.records, kind)
    start = fit.transient_end(t, y)
    keep = t >= start
    try:
        g = fit.fit_growth(t[keep], y[keep])
    except fit.FitError as exc:  # e.g. past the edge within the transient: no ordered window
        return {"A": math.nan, "A_se": math.nan, "y_mean": math.nan, "y0": float(y[0]),
                "y_end": float(y[-1]), "transient_end": float(start),
                "outcome": result.outcome, "fit_error": str(exc)}  # fmt: skip
    return {
        "A": g.A.value,
        "A_se": g.A.se,
        "y_mean": float(np.mean(y[keep])),
        "y0": float(y[0]),
        "y_end": float(y[-1]),
        "transient_end": float(start),
        "outcome": result.outcome,
    }


def exponent(points: list[tuple[float, float, int]], rng: np.random.Generator) -> dict[str, Any]:
    """Slope of log A on log x over (x, A, seed) points; 95 % interval from resampling seeds."""
    x = np.log([p[0] for p in points])
    y = np.log([p[1] for p in points])
    slope = float(np.polyfit(x, y, 1)[0])
    by_x: dict[float, list[int]] = {}
    for i, p in enumerate(points):
        by_x.setdefault(p[0], []).append(i)
    draws = []
    for _ in range(BOOTSTRAP):
        # A bootstrap over seed replicates: per x, one seed's A drawn at random.
        idx = [int(rng.choice(group)) for group in by_x.values()]
        draws.append(np.polyfit(x[idx], y[idx], 1)[0])
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (math.nan, math.nan)
    return {"value": slope, "low": float(low), "high": float(high)}


def measure_model(name: str, root: Path, device: torch.device) -> dict[str, Any]:
    model, dataset_spec, epochs = MODELS[name]
    spec = RecommendationSpec(
        model=model, dataset=dataset_spec, optimizer=OptimizerSpec(), budget=BudgetSpec()
    )
    kind = law.order_kind(spec)
    data = load_dataset(dataset_spec, [root], 0).to(device)

    def configs(etas: tuple[float, ...], batch: int, wd: float = 0.0) -> list[ProbeConfig]:
        steps = round(epochs * (data.train_size // batch))
        return [
            ProbeConfig(eta, 0.0, wd, batch, seed, steps, optimizer="adamw")
            for eta in etas
            for seed in SEEDS
        ]

    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for group, cfgs in (
        ("eta", configs(ETAS, 32)),
        ("batch", configs(BIG_BATCH_ETAS, 128)),
        ("decay", [c for wd in WDS for c in configs((DECAY_ETA,), 32, wd)]),
    ):
        for cfg, result in zip(cfgs, run(model, data, cfgs, device), strict=True):
            row = {"group": group, "eta": cfg.learning_rate, "batch": cfg.batch_size,
                   "weight_decay": cfg.weight_decay, "seed": cfg.seed}  # fmt: skip
            rows.append(row | growth(result, kind))
            print(
                f"  {name} {group:5s} η {cfg.learning_rate:.2g} B {cfg.batch_size} "
                f"wd {cfg.weight_decay:g} seed {cfg.seed}: A {row_a(rows[-1])}",
                flush=True,
            )
    rng = np.random.default_rng(0)
    eta_points = [(r["eta"], r["A"], r["seed"]) for r in rows if r["group"] == "eta" and r["A"] > 0]
    if len({p[0] for p in eta_points}) < 2:
        a = {"value": None, "low": None, "high": None}
    else:
        a = exponent(eta_points, rng)
    # Between neighbouring η (seed means): where the power law bends.
    means = {
        eta: float(np.mean([p[1] for p in eta_points if p[0] == eta]))
        for eta in sorted({p[0] for p in eta_points})
    }
    etas = list(means)
    local = [
        {"from": lo, "to": hi, "exponent": math.log(means[hi] / means[lo]) / math.log(hi / lo)}
        for lo, hi in zip(etas, etas[1:], strict=False)
    ]
    # 1/B: A at B 128 over A at B 32 for the same η and seed.
    small = {(r["eta"], r["seed"]): r["A"] for r in rows if r["group"] == "eta"}
    ratios = [
        small[(r["eta"], r["seed"])] / r["A"]
        for r in rows
        if r["group"] == "batch" and r["A"] > 0 and small.get((r["eta"], r["seed"]), 0) > 0
    ]
    b = [math.log(q) / math.log(4) for q in ratios]
    decay = []
    for r in rows:
        if r["group"] != "decay" or not small[(r["eta"], r["seed"])] > 0 or math.isnan(r["A"]):
            continue
        a0 = small[(r["eta"], r["seed"])]
        measured = (a0 - r["A"]) / r["y_mean"]
        theory = 2 * r["eta"] * r["weight_decay"] * data.train_size / r["batch"]
        decay.append(
            {"weight_decay": r["weight_decay"], "seed": r["seed"], "D_measured": measured,
             "D_theory": theory, "ratio": measured / theory}
        )  # fmt: skip
    return {
        "model": model.model_dump(mode="json"),
        "dataset": dataset_spec.model_dump(mode="json"),
        "train_size": data.train_size,
        "order_parameter": kind,
        "probe_epochs": epochs,
        "probes": rows,
        "eta_exponent": a,
        "eta_local_exponents": local,
        "batch_exponent": {"values": b, "mean": float(np.mean(b)) if b else None},
        "decay": decay,
        "wall_s": time.perf_counter() - start,
    }


def row_a(row: dict[str, Any]) -> str:
    return f"{row['A']:.4g} ± {1.96 * row['A_se']:.2g} (y {row['y0']:.3f} → {row['y_end']:.3f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="paper,cnn")
    args = study_arguments(parser).parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device()
    out = args.out or Path(__file__).parent / "results" / f"adamw_law_{device.type}.json"
    # Merged into what --out already holds: models can run apart (one per core) and resume.
    stored = read_json(out) or {"benchmark": "adamw_law", "models": {}}
    results: dict[str, Any] = stored["models"]
    for name in args.models.split(","):
        results[name] = measure_model(name, args.data_root, device)
        results[name]["provenance"] = provenance(
            device, argv or sys.argv[1:], script="benchmarks/adamw_law.py"
        )
        r = results[name]
        a = r["eta_exponent"]
        print(f"{name}: A ∝ η^{a['value']} [{a['low']}, {a['high']}], "
              f"1/B exponent {r['batch_exponent']['mean']}, D measured/theory "
              f"{[round(d['ratio'], 2) for d in r['decay']]}", flush=True)  # fmt: skip
        write_json(out, {"benchmark": "adamw_law", "models": results})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
