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
from pathlib import Path
from typing import Any

import torch

from benchmarks.suite import (
    REGISTRY,
    case_spec,
    provenance,
    read_json,
    study_arguments,
    write_json,
)
from worker import recommend
from worker.data import load_dataset
from worker.plan import PlannedProbe
from worker.probe import ProbeResult, pick_device

RESULTS = Path(__file__).parent / "results"
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated suite cases")
    parser.add_argument("--seeds", type=int, default=10)
    args = study_arguments(parser).parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device()
    out = args.out or RESULTS / f"probe_ranking_{device.type}.json"
    report = read_json(out) or {"benchmark": "probe_ranking", "cases": {}}
    for name in args.cases.split(","):
        data = load_dataset(REGISTRY[name].dataset, [args.data_root], 0).to(device)
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
        report["cases"][name] = {"about": REGISTRY[name].about, "picks": tally, "seeds": rows}
        report["provenance"] = provenance(device, argv, "benchmarks/probe_ranking.py")
        write_json(out, report)
        print(f"{name}: {tally}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
