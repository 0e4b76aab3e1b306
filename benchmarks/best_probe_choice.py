"""What the seed-dependent choice of the best probe costs, where no growth law places a run.

On the suite's two CNN cases (ReLU, Kaiming init) the engine answers with the probe of lowest
validation loss at equal τ (`no_growth_law`), and which probe that is depends on the seed
(benchmarks/results/exponent_uncertainty/<case>/: the answer of each of 20 seeds). The study
measures χ of the untrained networks over 20 seeds (whether a Kaiming net reads as at the
boundary, χ ≥ 1, was a coin flip before worker/decide.py took it from the spec). Then it trains
the answer each probe would give (its rate as the schedule's mean, as the engine turns it into
a peak) with 3 seeds, on the suite's split, one population per option, beside the suite's
folklore default. Selected on nothing: both options are reported on validation and test. Writes
benchmarks/results/best_probe_choice_<device>.json with the command, git revision and machine.
A claim about these two cases only.

    .venv/bin/python benchmarks/best_probe_choice.py [--cases digits-cnn-10ep,fmnist-cnn-small-5ep]
"""

from __future__ import annotations

import collections
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.suite import (
    OUT_DIR,
    REGISTRY,
    case_spec,
    case_study,
    default_summary,
    read_json,
    recommended_configs,
    train_and_read,
)
from worker.data import Dataset
from worker.law import order_series
from worker.plan import plan_probes
from worker.probe import ProbeConfig, run_population

RESULTS = Path(__file__).parent / "results"
CASES = ("digits-cnn-10ep", "fmnist-cnn-small-5ep")
SEEDS = 3
SEEDS_AT_STEP_0 = 20


def seed_answers(name: str) -> dict[str, int]:
    """How often each answer (its peak rate) came out over the exponent study's seeds."""
    folder = RESULTS / "exponent_uncertainty" / name
    rates = [p["learning_rate"] for f in sorted(folder.glob("seed*.json")) if (p := read_json(f))]
    return {f"{rate:.4g}": n for rate, n in sorted(collections.Counter(rates).items())}


def chi_at_step_0(name: str, data: Dataset, device: torch.device) -> dict[str, Any]:
    """χ of the untrained network over SEEDS_AT_STEP_0 seeds, each probe's own initialisation
    (the plan's seeds) measured on one batch as the probes' first record is: the scatter that
    decides whether a Kaiming-ReLU net reads as at the boundary (χ ≥ 1) or below it."""
    case = REGISTRY[name]
    spec = case_spec(case)
    values = []
    for seed in range(SEEDS_AT_STEP_0):
        seeds = [p.config.seed for p in plan_probes(spec.model_copy(update={"seed": seed}), data)]
        configs = [ProbeConfig(0.0, 0.0, 0.0, case.batch_size, s, 0) for s in seeds]
        results = run_population(
            case.model, data, configs, device=device, measure_every=0, eval_every=0
        )
        values.append([float(order_series(r.records[:1], "chi")[1][0]) for r in results])
    flat = [v for row in values for v in row]
    return {
        "per_seed": values,
        "mean": statistics.mean(flat),
        "sd": statistics.stdev(flat),
        "seeds_whose_median_is_at_least_1": sum(statistics.median(row) >= 1 for row in values),
    }


def run_case(name: str, data: Dataset, device: torch.device) -> dict[str, Any]:
    case = REGISTRY[name]
    stored = read_json(OUT_DIR / name / "recommend.json")
    default = read_json(OUT_DIR / (case.runs_from or name) / "default.json")
    if stored is None or default is None:
        raise SystemExit(f"{name}: run benchmarks/suite.py --cases {name} first")
    answer = stored["engine"]["recommendation"]
    hyper = answer["hyperparameters"]
    mean = hyper["schedule"]["mean_multiplier"]
    options = {}
    for probe in answer["edge"]["probes"]:
        h = dict(hyper, learning_rate=probe["learning_rate"] / mean)
        configs = recommended_configs(h, range(SEEDS))
        reads, wall = train_and_read(case.model, data, configs, [float(h["epochs"])], device)
        test = [r[0]["test_accuracy"] for r in reads]
        val = [r[0]["val_accuracy"] for r in reads]
        options[probe["key"]] = {
            "probe_learning_rate": probe["learning_rate"],
            "peak_learning_rate": h["learning_rate"],
            "test_accuracy": test,
            "val_accuracy": val,
            "test_accuracy_mean": statistics.mean(test),
            "test_accuracy_std": statistics.stdev(test),
            "val_accuracy_mean": statistics.mean(val),
            "training_wall_s": wall,
        }
    return {
        "about": case.about,
        "answer_at_seed_0": hyper["learning_rate"],
        "answers_over_seeds": seed_answers(name),
        "chi_at_step_0": chi_at_step_0(name, data, device),
        "options": options,
        "default": default_summary(default, case.epochs),
    }


def show(name: str, c: dict[str, Any]) -> None:
    d, chi = c["default"], c["chi_at_step_0"]
    print(
        f"{name}: χ at step 0 {chi['mean']:.3f} ± {chi['sd']:.3f} (median ≥ 1 in "
        f"{chi['seeds_whose_median_is_at_least_1']}/{SEEDS_AT_STEP_0} seeds); answers over "
        f"seeds {c['answers_over_seeds']}; the default {d['test_accuracy_mean']:.4f} ± "
        f"{d['test_accuracy_std']:.4f}"
    )
    for key, o in c["options"].items():
        print(
            f"  {key}: peak {o['peak_learning_rate']:.4g}  test {o['test_accuracy_mean']:.4f}"
            f" ± {o['test_accuracy_std']:.4f}  val {o['val_accuracy_mean']:.4f}"
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return case_study(
        argv,
        doc=__doc__ or "",
        benchmark="best_probe_choice",
        cases=CASES,
        run=lambda name, data, _args, device: run_case(name, data, device),
        show=show,
    )


if __name__ == "__main__":
    sys.exit(main())
