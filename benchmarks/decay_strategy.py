"""Which way to the edge trains better within a fixed budget on the paper model? (issue 12 item 6)

A fair study, seeds × strategies in one run on the same data split, at B = 32 and a 20-epoch
budget on real Fashion-MNIST: selected on validation accuracy, reported on test accuracy.
- edge at the end, no decay (the engine's default, worker/law.py `choose_config`): (η 0.01, α 0.9),
  whose J reaches ≈ 1 at epoch 20;
- saturating: (η 0.038, α 0.9, weight_decay 1e-4 = k/(2S), the simple theory's edge decay),
  ~4× the effective learning rate so the relaxation gets close to the edge in time;
- in between: (η 0.02, α 0.9, weight_decay 5e-5).
It prints each strategy's mean ± std over the seeds and which won, and writes
benchmarks/results/decay_strategy_<device>.json with the command, git revision and machine.
The constants are for this model and data: the result is a claim about Fashion-MNIST.

    .venv/bin/python benchmarks/decay_strategy.py [--epochs 20] [--seeds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from app.schemas import DatasetSpec, MLPSpec
from benchmarks.suite import provenance, study_arguments, train_and_read, write_json
from worker.data import load_dataset
from worker.probe import ProbeConfig, pick_device

STRATEGIES = {
    "edge at the end, no decay": (0.01, 0.9, 0.0),
    "saturating decay at the edge": (0.038, 0.9, 1e-4),
    "in between": (0.02, 0.9, 5e-5),
}
KNOBS = ("learning_rate", "momentum", "weight_decay")


def summarise(rows: list[dict[str, object]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in STRATEGIES:
        runs = [r for r in rows if r["strategy"] == name]
        val = [float(r["val_accuracy"]) for r in runs]  # type: ignore[arg-type]
        test = [float(r["test_accuracy"]) for r in runs]  # type: ignore[arg-type]
        out[name] = {
            "val_mean": statistics.mean(val),
            "test_mean": statistics.mean(test),
            "test_std": statistics.stdev(test) if len(test) > 1 else 0.0,
            "J_final_mean": statistics.mean(float(r["J_final"]) for r in runs),  # type: ignore[arg-type]
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=5)
    args = study_arguments(parser).parse_args(argv)
    torch.set_num_threads(args.threads)
    model = MLPSpec()  # the paper's network
    data = load_dataset(DatasetSpec(name="fashion-mnist"), [args.data_root])
    device = pick_device()
    data = data.to(device)
    plan = [(name, seed) for name in STRATEGIES for seed in range(args.seeds)]
    configs = [
        ProbeConfig(*STRATEGIES[name][:2], STRATEGIES[name][2], args.batch, seed, 0)
        for name, seed in plan
    ]
    start = time.time()
    # Reads at quarters of the budget: a record every quarter keeps the population's per-step
    # state bounded (a single read let a 15-member, 34k-step run grow past 20 GB).
    quarters = [args.epochs * q / 4 for q in (1, 2, 3, 4)]
    readouts, wall = train_and_read(model, data, configs, quarters, device)
    rows = [
        {
            "strategy": name,
            "seed": seed,
            **dict(
                zip(("learning_rate", "momentum", "weight_decay"), STRATEGIES[name], strict=True)
            ),
            "val_accuracy": reads[-1]["val_accuracy"],
            "test_accuracy": reads[-1]["test_accuracy"],
            "J_final": reads[-1]["J_max"],
        }
        for (name, seed), reads in zip(plan, readouts, strict=True)
    ]
    summary = summarise(rows)
    winner = max(summary, key=lambda n: summary[n]["val_mean"])
    for name, s in summary.items():
        print(
            f"{name:32s} val {s['val_mean']:.4f}  test {s['test_mean']:.4f} ± {s['test_std']:.4f}"
            f"  J_end {s['J_final_mean']:.2f}"
        )
    print(f"selected on validation: {winner} (test {summary[winner]['test_mean']:.4f})")
    report = {
        "benchmark": "decay_strategy",
        "question": "edge at the end without decay vs decay saturating at the edge (issue 12 #6)",
        "epochs": args.epochs,
        "batch_size": args.batch,
        "seeds": args.seeds,
        "selected_on": "validation accuracy (mean over seeds); test accuracy reported",
        "winner": winner,
        "summary": summary,
        "runs": rows,
        "training_wall_s": wall,
        "seconds": time.time() - start,
        "provenance": provenance(
            device, argv or sys.argv[1:], script="benchmarks/decay_strategy.py"
        ),
    }
    out = args.out or Path(__file__).parent / "results" / f"decay_strategy_{device.type}.json"
    write_json(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
