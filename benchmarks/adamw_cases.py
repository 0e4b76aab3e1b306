"""AdamW beyond the paper model at 20 epochs: does its answer beat AdamW's default elsewhere?

adamw_check.py measures one case. This study asks the engine for an AdamW answer
(`optimizer: {type: adamw}`, everything else free, through `worker.recommend.run`) on other suite
cases, and trains, in one population per case on the suite's split, at the case's batch size
and budget:
  - the answer, 3 seeds;
  - AdamW's folklore default, `lr 1e-3, weight_decay 0.01` at a constant rate, 3 seeds;
  - a reference grid, lr ∈ GRID_LRS at weight_decay 0.01, constant rate, 1 seed.
Selected on validation, reported on test. Resumable per case; writes
benchmarks/results/adamw_cases_<device>.json with the command, git revision and machine.
A claim about these cases only.

    .venv/bin/python benchmarks/adamw_cases.py [--cases fmnist-paper-3ep-10k,...] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import torch

from app.schemas import OptimizerSpec
from benchmarks.recommend_fmnist import timed_engine_run
from benchmarks.suite import (
    REGISTRY,
    case_spec,
    case_study,
    recommended_configs,
    train_and_read,
)
from worker.data import Dataset
from worker.probe import ProbeConfig

CASES = (
    "fmnist-paper-3ep-10k",
    "digits-mlp64-10ep",
    "fmnist-paper-3ep",
    "fmnist-gelu-256x2-10ep-20k",
)
SEEDS = 3
GRID_LRS = (1e-4, 3e-4, 1e-3, 3e-3)
DEFAULT_LR, DEFAULT_WD = 1e-3, 0.01


def _summary(reads: list[dict[str, Any]]) -> dict[str, Any]:
    test = [r["test_accuracy"] for r in reads]
    return {
        "test_accuracy": test,
        "test_accuracy_mean": statistics.mean(test),
        "test_accuracy_std": statistics.stdev(test),
        "val_accuracy_mean": statistics.mean(r["val_accuracy"] for r in reads),
        "J_max_mean": statistics.mean(r["J_max"] for r in reads),
    }


def run_case(
    name: str, data: Dataset, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    case = REGISTRY[name]
    spec = case_spec(case).model_copy(update={"optimizer": OptimizerSpec(type="adamw")})
    engine = timed_engine_run(spec, data, device)
    rec = engine.recommendation.model_dump(mode="json")
    hyper = rec["hyperparameters"]
    if hyper is None:
        return {"about": case.about, "recommendation": rec}
    batch = hyper["batch_size"]

    def adamw(lr: float, seed: int) -> ProbeConfig:
        return ProbeConfig(lr, 0.0, DEFAULT_WD, batch, seed, 0, optimizer="adamw")

    ours = recommended_configs(hyper, range(SEEDS))
    defaults = [adamw(DEFAULT_LR, s) for s in range(SEEDS)]
    grid = [adamw(lr, 0) for lr in GRID_LRS]
    readouts, wall = train_and_read(case.model, data, ours + defaults + grid, [case.epochs], device)
    reads = [r[-1] for r in readouts]
    rows = zip(grid, reads[2 * SEEDS :], strict=True)
    grid_rows = [{"learning_rate": c.learning_rate, **r} for c, r in rows]
    best = max(grid_rows, key=lambda r: r["val_accuracy"])
    return {
        "about": case.about,
        "epochs": case.epochs,
        "batch_size": batch,
        "recommendation": rec,
        "recommended": _summary(reads[:SEEDS]),
        "default": {"learning_rate": DEFAULT_LR, "weight_decay": DEFAULT_WD}
        | _summary(reads[SEEDS : 2 * SEEDS]),
        "grid": grid_rows,
        "grid_best": best,
        "probe_full_runs": rec["cost"]["full_run_equivalents"],
        "training_wall_s": wall,
    }


def show(name: str, c: dict[str, Any]) -> None:
    if "recommended" not in c:
        print(f"{name}: no answer ({c['recommendation']['validity']['reason']})")
        return
    ours, dflt, best = c["recommended"], c["default"], c["grid_best"]
    hyper = c["recommendation"]["hyperparameters"]
    print(
        f"{name}: answer peak {hyper['learning_rate']:.3g} ({hyper['schedule']['name']}, "
        f"wd {hyper['weight_decay']:g}) {ours['test_accuracy_mean']:.4f} ± "
        f"{ours['test_accuracy_std']:.4f}; default {dflt['test_accuracy_mean']:.4f} ± "
        f"{dflt['test_accuracy_std']:.4f}; grid best (lr {best['learning_rate']:g}) "
        f"{best['test_accuracy']:.4f}; probes {c['probe_full_runs']:.3f} runs",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return case_study(
        argv, doc=__doc__ or "", benchmark="adamw_cases", cases=CASES, run=run_case, show=show
    )


if __name__ == "__main__":
    sys.exit(main())
