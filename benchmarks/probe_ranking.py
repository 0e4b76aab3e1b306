"""Which probe is better: judged at equal τ, or after equal training examples?

Where no law places a run (Kaiming-ReLU CNNs; AdamW), the engine answers with its better probe.
The probes of one plan reach the same τ = epochs·η/((1−α)B), so the slower one has seen 4× the
examples of the faster one by its end; one population evaluates every live member where one of
them ends, so each probe also holds a validation loss after as many examples as the shortest saw.
This study runs the engine (`worker.recommend.run`, the suite's spec) under several seeds and
records, per seed, each probe's validation loss at that common point and at its own end, the
probe each rule picks and the engine's answer. What each probe's answer trains to is measured by
benchmarks/best_probe_choice.py (the CNN cases) and benchmarks/adamw_check.py (AdamW).
Writes benchmarks/results/probe_ranking_<device>.json with the command, git revision and machine.
A claim about these cases only.

    .venv/bin/python benchmarks/probe_ranking.py [--cases digits-cnn-10ep,...] [--seeds 10]
"""

from __future__ import annotations

import argparse
import collections
import sys
from typing import Any

import torch

from benchmarks.suite import REGISTRY, case_spec, case_study
from worker import recommend
from worker.data import Dataset
from worker.plan import PlannedProbe
from worker.probe import ProbeResult

CASES = ("digits-cnn-10ep", "fmnist-cnn-small-5ep")


def _losses(result: ProbeResult, common: int) -> tuple[float | None, float | None]:
    """(validation loss after `common` examples, at the probe's end)."""
    batch = result.config.batch_size
    evals = [(r.step * batch, r.val_loss) for r in result.records if r.val_loss is not None]
    at = [v for n, v in evals if n == common]
    return (at[-1] if at else None), (evals[-1][1] if evals else None)


def run_seed(name: str, seed: int, data: Any, device: torch.device) -> dict[str, Any]:
    spec = case_spec(REGISTRY[name]).model_copy(update={"seed": seed})
    got: dict[str, ProbeResult] = {}

    def keep(probe: PlannedProbe, result: ProbeResult) -> None:
        got[probe.key] = result

    rec = recommend.run(spec, data, device=device, on_probe=keep)
    if rec is None or rec.hyperparameters is None:
        raise SystemExit(f"{name} seed {seed}: no answer ({rec and rec.validity.reason})")
    common = min(r.steps_done * r.config.batch_size for r in got.values())
    probes = {}
    for key, r in sorted(got.items()):
        at, end = _losses(r, common)
        probes[key] = {"learning_rate": r.config.learning_rate, "at_common": at, "at_end": end}
    rates = {key: r.config.learning_rate for key, r in got.items()}

    def pick(field: str) -> float:
        return rates[min(probes, key=lambda k: probes[k][field] or float("inf"))]

    hp = rec.hyperparameters
    return {
        "seed": seed,
        "common_examples": common,
        "probes": probes,
        "pick_at_equal_examples": pick("at_common"),
        "pick_at_equal_tau": pick("at_end"),
        "answer_mean_rate": hp.learning_rate * (hp.schedule.mean_multiplier if hp.schedule else 1),
    }


def run_case(
    name: str, data: Dataset, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    rows = []
    for seed in range(args.seeds):
        rows.append(row := run_seed(name, seed, data, device))
        print(
            f"{name} seed {seed}: equal examples picks {row['pick_at_equal_examples']:.3g}, "
            f"equal τ {row['pick_at_equal_tau']:.3g}; answer {row['answer_mean_rate']:.3g}",
            flush=True,
        )
    tally = {
        rule: dict(collections.Counter(f"{r[f'pick_at_{rule}']:.3g}" for r in rows))
        for rule in ("equal_examples", "equal_tau")
    }
    return {"about": REGISTRY[name].about, "picks": tally, "seeds": rows}


def seeds_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=10, help="engine runs per case")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return case_study(
        argv,
        doc=__doc__ or "",
        benchmark="probe_ranking",
        cases=CASES,
        run=run_case,
        show=lambda name, c: print(f"{name}: {c['picks']}"),
        options=seeds_option,
    )


if __name__ == "__main__":
    sys.exit(main())
