"""Does a scheduled recommendation land where the growth law says? (issue 9, schedules)

The paper model on real Fashion-MNIST at a 20-epoch budget, two specs through the engine's one
entry point (worker.recommend.run): constant rate, and warmup-cosine (1 warm-up epoch). Each
recommendation is then trained with 3 seeds on the same split, in one population. It prints, for
each, the predicted and the measured order parameter at the end (J² of the fastest layer) and the
test accuracy (mean ± std), and checks the two acceptance lines: the scheduled run's final order
parameter within 5 % of the prediction, and its accuracy at least the constant one's − 0.1
points. Writes benchmarks/results/schedule_check_<device>.json with the command, git revision and
machine. A claim about this model and data only.

    .venv/bin/python benchmarks/schedule_check.py [--seeds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.schemas import BudgetSpec, DatasetSpec, MLPSpec, OptimizerSpec, RecommendationSpec
from benchmarks.recommend_fmnist import timed_engine_run
from benchmarks.suite import (
    provenance,
    recommended_configs,
    study_arguments,
    train_and_read,
    write_json,
)
from worker.data import load_dataset
from worker.probe import ProbeConfig, pick_device

EPOCHS = 20.0
SPECS = {
    "constant": OptimizerSpec(schedule="constant"),  # the default (null) is warmup-cosine
    "warmup-cosine": OptimizerSpec(schedule="warmup-cosine", warmup_epochs=1.0),
}


def _measured_trajectory(
    recommendation: dict[str, Any], members: list[list[dict[str, Any]]]
) -> dict[str, list[float]]:
    """Per epoch: the seeds' mean measured J² and the prediction read at that epoch."""
    predicted = recommendation["edge"]["predicted_trajectory"]
    epochs = [row["epochs"] for row in members[0]]
    measured = [
        statistics.mean(reads[k]["J_max"] ** 2 for reads in members) for k in range(len(epochs))
    ]
    return {
        "epoch": epochs,
        "measured": measured,
        "predicted": [float(np.interp(e, predicted["epoch"], predicted["value"])) for e in epochs],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = study_arguments(parser).parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device()
    start = time.time()
    data = load_dataset(DatasetSpec(name="fashion-mnist"), [args.data_root]).to(device)
    arms: dict[str, dict[str, Any]] = {}
    trained: list[ProbeConfig] = []
    for name, optimizer in SPECS.items():
        spec = RecommendationSpec(
            model=MLPSpec(), dataset=DatasetSpec(name="fashion-mnist"), optimizer=optimizer,
            budget=BudgetSpec(epochs=EPOCHS),
        )  # fmt: skip
        rec = timed_engine_run(spec, data, device).recommendation
        hyper = rec.model_dump(mode="json")["hyperparameters"]
        arms[name] = {"recommendation": rec.model_dump(mode="json")}
        trained += recommended_configs(hyper, range(args.seeds))
    # A read every epoch: the measured trajectory beside the predicted one shows where a miss
    # comes from (frequent records also keep the population's per-step state bounded: a single
    # read let a long run grow past 18 GB).
    epochs = [float(e) for e in range(1, int(EPOCHS) + 1)]
    readouts, wall = train_and_read(MLPSpec(), data, trained, epochs, device)
    for i, (name, arm) in enumerate(arms.items()):
        members = readouts[i * args.seeds : (i + 1) * args.seeds]
        arm["measured_trajectory"] = _measured_trajectory(arm["recommendation"], members)
        reads = [r[-1] for r in members]
        test = [r["test_accuracy"] for r in reads]
        measured = statistics.mean(r["J_max"] ** 2 for r in reads)
        predicted = arm["recommendation"]["edge"]["predicted_final"]
        arm |= {
            "runs": reads,
            "test_accuracy_mean": statistics.mean(test),
            "test_accuracy_std": statistics.stdev(test) if len(test) > 1 else 0.0,
            "order_final_measured": measured,
            "order_final_predicted": predicted,
            "order_final_error": measured / predicted - 1,
        }
        hp = arm["recommendation"]["hyperparameters"]
        print(
            f"{name:14s} lr {hp['learning_rate']:.4g}  test {arm['test_accuracy_mean']:.4f} ± "
            f"{arm['test_accuracy_std']:.4f}  J² end predicted {predicted:.3f} measured "
            f"{measured:.3f} ({100 * arm['order_final_error']:+.1f} %)"
        )
        traj = arm["measured_trajectory"]
        print("   epoch     " + " ".join(f"{e:6.0f}" for e in traj["epoch"][::2]))
        print("   measured  " + " ".join(f"{v:6.3f}" for v in traj["measured"][::2]))
        print("   predicted " + " ".join(f"{v:6.3f}" for v in traj["predicted"][::2]))
    sched, const = arms["warmup-cosine"], arms["constant"]
    checks = {
        "final order parameter within 5 % of the prediction": abs(sched["order_final_error"])
        <= 0.05,
        "accuracy ≥ the constant rate's − 0.1 points": sched["test_accuracy_mean"]
        >= const["test_accuracy_mean"] - 0.001,
    }
    for line, ok in checks.items():
        print(f"  {'met    ' if ok else 'NOT MET'}  {line}")
    report = {
        "benchmark": "schedule_check",
        "epochs": EPOCHS,
        "seeds": args.seeds,
        "arms": arms,
        "checks": checks,
        "training_wall_s": wall,
        "seconds": time.time() - start,
        "provenance": provenance(
            device, argv or sys.argv[1:], script="benchmarks/schedule_check.py"
        ),
    }
    out = args.out or Path(__file__).parent / "results" / f"schedule_check_{device.type}.json"
    write_json(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
