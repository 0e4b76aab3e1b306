"""Where does AdamW's best learning rate leave the order parameter? (issue 9, AdamW criterion)

Under SGD the best run of a budget ends near the edge (J ≈ 1), which is what the engine steers
to. Under AdamW the best of adamw_check's 12-config grid on the paper model at 20 epochs ended far
past it, at J ≈ 2.5. Is some other J at the end AdamW's criterion? For each case below, one run
per learning rate in LRS (weight_decay 0.01, AdamW's folklore decay; constant rate; B 32; one
seed; all members of a case in one population on one data split): validation and test accuracy
and max_l J_l at the end. The best is chosen on validation. The paper model at 20 epochs is read
from benchmarks/results/adamw_check_cpu.json (same grid rows, weight_decay 0.01), not re-run.
Writes benchmarks/results/adamw_optimum_<device>.json with the command, git revision and machine.

    .venv/bin/python benchmarks/adamw_optimum.py [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.suite import (
    REGISTRY,
    provenance,
    study_arguments,
    train_and_read,
    write_json,
)
from worker.data import load_dataset
from worker.probe import ProbeConfig, pick_device

LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
WEIGHT_DECAY = 0.01
BATCH = 32
# Cheap cases of the suite, other budgets and data than adamw_check's: (suite case, epochs).
CASES = (("fmnist-paper-3ep-10k", 3.0), ("fmnist-paper-3ep", 3.0), ("digits-mlp64-10ep", 10.0))
RESULTS = Path(__file__).parent / "results"


def run_case(name: str, epochs: float, data_root: Path, device: torch.device) -> dict[str, Any]:
    case = REGISTRY[name]
    data = load_dataset(case.dataset, [data_root]).to(device)
    configs = [ProbeConfig(lr, 0.0, WEIGHT_DECAY, BATCH, 0, 0, optimizer="adamw") for lr in LRS]
    readouts, wall = train_and_read(case.model, data, configs, [epochs], device)
    runs = [{"learning_rate": lr, **reads[-1]} for lr, reads in zip(LRS, readouts, strict=True)]
    return {"about": case.about, "epochs": epochs, "runs": runs, "training_wall_s": wall}


def paper_20_epochs() -> dict[str, Any]:
    """adamw_check's grid rows at weight_decay 0.01 (the paper model, 20 epochs)."""
    stored = json.loads((RESULTS / "adamw_check_cpu.json").read_text())
    runs = [r for r in stored["grid"] if r["weight_decay"] == WEIGHT_DECAY]
    return {
        "about": "paper model, Fashion-MNIST, B 32 (read from adamw_check_cpu.json)",
        "epochs": stored["epochs"],
        "runs": runs,
        "provenance": stored["provenance"],
    }


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return max(runs, key=lambda r: (r["val_accuracy"], -r["learning_rate"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args = study_arguments(parser).parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device()
    start = time.time()
    cases = {"fmnist-paper-20ep": paper_20_epochs()}
    for name, epochs in CASES:
        cases[name] = run_case(name, epochs, args.data_root, device)
    print(f"{'case':24s} {'epochs':>6s}  " + "  ".join(f"lr {lr:<8g}" for lr in LRS))
    for name, case in cases.items():
        by_lr = {r["learning_rate"]: r for r in case["runs"]}
        cells = [
            f"{by_lr[lr]['test_accuracy']:.4f} J{by_lr[lr]['J_max']:.2f}" if lr in by_lr else "-"
            for lr in LRS
        ]
        top = best(case["runs"])
        case["best"] = top
        print(f"{name:24s} {case['epochs']:6g}  " + "  ".join(f"{c:>11s}" for c in cells))
        print(f"{'':24s} best on validation: lr {top['learning_rate']:g}, J {top['J_max']:.2f}")
    ends = [c["best"]["J_max"] for c in cases.values()]
    print(f"J at the end of the best run: {min(ends):.2f} to {max(ends):.2f}")
    report = {
        "benchmark": "adamw_optimum",
        "learning_rates": LRS,
        "weight_decay": WEIGHT_DECAY,
        "batch_size": BATCH,
        "cases": cases,
        "best_J_range": [min(ends), max(ends)],
        "seconds": time.time() - start,
        "provenance": provenance(
            device, argv or sys.argv[1:], script="benchmarks/adamw_optimum.py"
        ),
    }
    out = args.out or RESULTS / f"adamw_optimum_{device.type}.json"
    write_json(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
