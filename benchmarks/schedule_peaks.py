"""How high may a schedule's peak go? (issue 12: the rate bound under a schedule)

The paper model on real Fashion-MNIST at B 32, α 0.9, in one population per budget: the folklore
default (lr 0.01, constant) and warmup-cosine (a 5 % warm-up, the engine's free schedule) at peaks
PEAKS, 3 seeds each, trained for the case's budget. Selected on validation, reported on test; J
of the fastest layer at the end beside it. The bound in worker/law.py `max_step` (the peak's
mean rate inside the law's range, η/(1−α) ≤ 0.4 at the peak) rests on these numbers.
Writes benchmarks/results/schedule_peaks_<device>.json (merged over --cases) with the command,
git revision and machine. A claim about this model and data only.

    .venv/bin/python benchmarks/schedule_peaks.py --cases 3ep-10k,3ep,10ep [--threads 1]
    .venv/bin/python benchmarks/schedule_peaks.py --cases 20ep --peaks 0.01  # the default's rate

"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from app.schemas import DatasetSpec, MLPSpec
from benchmarks.suite import provenance, read_json, study_arguments, train_and_read, write_json
from worker.data import load_dataset
from worker.probe import ProbeConfig, pick_device

PEAKS = (0.01, 0.02, 0.04)
CASES = {  # name: (training examples, None = all; epochs)
    "3ep-10k": (10_000, 3.0),
    "3ep": (None, 3.0),
    "10ep": (None, 10.0),
    "20ep": (None, 20.0),
}


def configs(epochs: float, seeds: int, peaks: tuple[float, ...]) -> list[ProbeConfig]:
    out = []
    for seed in range(seeds):
        out.append(ProbeConfig(0.01, 0.9, 0.0, 32, seed, 0))
        out += [
            ProbeConfig(peak, 0.9, 0.0, 32, seed, 0, schedule="warmup-cosine",
                        schedule_epochs=epochs, warmup_epochs=0.05 * epochs)
            for peak in peaks
        ]  # fmt: skip
    return out


def run_case(
    name: str, root: Path, seeds: int, peaks: tuple[float, ...], device: torch.device
) -> dict[str, Any]:
    n, epochs = CASES[name]
    data = load_dataset(DatasetSpec(name="fashion-mnist", max_train_samples=n), [root], 0)
    trained = configs(epochs, seeds, peaks)
    readouts, wall = train_and_read(MLPSpec(), data.to(device), trained, [epochs], device)
    arms: dict[str, list[dict[str, Any]]] = {}
    for c, reads in zip(trained, readouts, strict=True):
        arms.setdefault(f"{c.schedule} {c.learning_rate:g}", []).append(reads[-1])
    rows = {}
    for arm, reads in arms.items():
        test = [r["test_accuracy"] for r in reads]
        rows[arm] = {
            "val_accuracy_mean": statistics.mean(r["val_accuracy"] for r in reads),
            "test_accuracy_mean": statistics.mean(test),
            "test_accuracy_std": statistics.stdev(test),
            "J_max_end_mean": statistics.mean(r["J_max"] for r in reads),
            "runs": reads,
        }
        print(f"{name:8s} {arm:20s} val {rows[arm]['val_accuracy_mean']:.4f} test "
              f"{rows[arm]['test_accuracy_mean']:.4f} ± {rows[arm]['test_accuracy_std']:.4f} "
              f"J {rows[arm]['J_max_end_mean']:.3f}", flush=True)  # fmt: skip
    return {"train_size": data.train_size, "epochs": epochs, "arms": rows, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--peaks", default=",".join(map(str, PEAKS)), help="warmup-cosine peaks")
    args = study_arguments(parser).parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device()
    out = args.out or Path(__file__).parent / "results" / f"schedule_peaks_{device.type}.json"
    for name in args.cases.split(","):
        start = time.time()
        peaks = tuple(float(p) for p in args.peaks.split(","))
        result = run_case(name, args.data_root, args.seeds, peaks, device)
        merged = read_json(out) or {"benchmark": "schedule_peaks", "cases": {}}
        merged["cases"][name] = result | {
            "seconds": time.time() - start,
            "provenance": provenance(device, argv or sys.argv[1:], "benchmarks/schedule_peaks.py"),
        }
        write_json(out, merged)  # each case as it finishes: splittable and resumable
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
