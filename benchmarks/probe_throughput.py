"""Probe throughput: population-batched probes against the same configs trained one by one.

The paper's model (784 → 784 tanh, no hidden bias → 10) at B = 32 on the real Fashion-MNIST
training set (55,000 examples after the validation split). For population sizes 1, 8 and 32 it
times `run_population` (one pass for all members; measurements only at step 0 and the last step)
against `train_sequential` (plain nn.Module + torch.optim.SGD, one config after another, no
measurements) on the same configs, and reports config-samples per second = members × B × steps /
seconds. It then measures what the order-parameter measurements cost at the default intervals:

- per measurement and per evaluation, from short runs that measure at every step, relative to a
  training step (steady state: cost/interval ÷ step time);
- end to end, a population trained for one epoch with the default intervals against the same run
  with measurements off.

Every timing is the best of `--repeats` runs, runs of the variants interleaved: the machines this
runs on may be shared, and the minimum is the least disturbed estimate.

    .venv/bin/python benchmarks/probe_throughput.py [--device cuda] [--steps N] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from app.schemas import DatasetSpec, MLPSpec
from worker.data import Dataset, load_dataset
from worker.probe import (
    ProbeConfig,
    default_intervals,
    pick_device,
    run_population,
    train_sequential,
)

REPO = Path(__file__).resolve().parents[1]
BATCH = 32
MODEL = MLPSpec()  # the paper's network


def data_root() -> Path:
    return Path(os.environ.get("EDGETUNE_DATA_ROOT", REPO.parent / "shared" / "datasets"))


def make_configs(members: int, steps: int) -> list[ProbeConfig]:
    """Distinct ordered-regime configurations: η 0.005–0.04, α ∈ {0, 0.5, 0.9}, some decay."""
    rates = [0.005, 0.01, 0.02, 0.04]
    momenta = [0.0, 0.5, 0.9]
    return [
        ProbeConfig(
            learning_rate=rates[i % len(rates)],
            momentum=momenta[i % len(momenta)],
            weight_decay=1e-4 if i % 2 else 0.0,
            batch_size=BATCH,
            seed=i,
            steps=steps,
        )
        for i in range(members)
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_population(
    data: Dataset,
    configs: list[ProbeConfig],
    device: torch.device,
    measure_every: int | None,
    eval_every: int | None,
) -> float:
    sync(device)
    start = time.perf_counter()
    run_population(
        MODEL, data, configs, device=device, measure_every=measure_every, eval_every=eval_every
    )
    sync(device)
    return time.perf_counter() - start


def time_sequential(data: Dataset, configs: list[ProbeConfig], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for config in configs:
        train_sequential(MODEL, data, config, device=device)
    sync(device)
    return time.perf_counter() - start


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_average_at_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def throughput(
    data: Dataset, device: torch.device, sizes: list[int], steps: int, repeats: int
) -> list[dict[str, Any]]:
    rows = []
    for members in sizes:
        configs = make_configs(members, steps)
        population, sequential = [], []
        for _ in range(repeats):
            population.append(time_population(data, configs, device, 0, 0))
            sequential.append(time_sequential(data, configs, device))
        samples = members * BATCH * steps
        rows.append(
            {
                "members": members,
                "steps": steps,
                "config_samples": samples,
                "population_seconds": min(population),
                "sequential_seconds": min(sequential),
                "population_samples_per_s": samples / min(population),
                "sequential_samples_per_s": samples / min(sequential),
                "speedup": min(sequential) / min(population),
                "population_seconds_all": population,
                "sequential_seconds_all": sequential,
            }
        )
        print(
            f"  {members:>3} members: population {min(population):7.2f} s, "
            f"sequential {min(sequential):7.2f} s",
            flush=True,
        )
    return rows


def overhead(
    data: Dataset, device: torch.device, members: int, steps: int, probe_steps: int, repeats: int
) -> dict[str, Any]:
    measure_every, eval_every = default_intervals(data.train_size, BATCH)
    # Steady state: runs that measure (and evaluate) at every step, against none.
    short = make_configs(members, steps)
    off, measured, evaluated = [], [], []
    for _ in range(repeats):
        off.append(time_population(data, short, device, 0, 0))
        measured.append(time_population(data, short, device, 1, 0))
        evaluated.append(time_population(data, short, device, 1, 1))
    step_s = min(off) / steps
    measure_s = (min(measured) - min(off)) / steps
    eval_s = (min(evaluated) - min(measured)) / steps
    steady = (measure_s / measure_every + eval_s / eval_every) / step_s
    # End to end: one probe of `probe_steps` with the default intervals against none.
    long = make_configs(members, probe_steps)
    default_runs, off_runs = [], []
    for _ in range(repeats):
        default_runs.append(time_population(data, long, device, None, None))
        off_runs.append(time_population(data, long, device, 0, 0))
    points = {0, probe_steps} | set(range(0, probe_steps + 1, measure_every))
    evals = {0, probe_steps} | set(range(0, probe_steps + 1, eval_every))
    return {
        "members": members,
        "measure_every": measure_every,
        "eval_every": eval_every,
        "step_ms": 1e3 * step_s,
        "measurement_ms": 1e3 * measure_s,
        "evaluation_ms": 1e3 * eval_s,
        "steady_state_percent": 100 * steady,
        "end_to_end": {
            "steps": probe_steps,
            "epochs": probe_steps * BATCH / data.train_size,
            "records": len(points),
            "evaluations": len(evals),
            "default_seconds": min(default_runs),
            "off_seconds": min(off_runs),
            "percent": 100 * (min(default_runs) - min(off_runs)) / min(off_runs),
            "default_seconds_all": default_runs,
            "off_seconds_all": off_runs,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--steps", type=int, default=None, help="steps per throughput run")
    parser.add_argument("--sizes", default="1,8,32", help="population sizes")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--overhead-members", type=int, default=None, help="default 8 on a GPU, 4 on a CPU"
    )
    parser.add_argument(
        "--overhead-steps", type=int, default=None, help="end-to-end probe length (default 1 epoch)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    steps = args.steps or (500 if gpu else 100)
    overhead_members = args.overhead_members or (8 if gpu else 4)
    out = (
        args.out
        or REPO / "benchmarks" / "results" / f"probe_throughput_{'gpu' if gpu else 'cpu'}.json"
    )
    info = machine(device)
    started = time.perf_counter()

    # On the device once: both the population and the sequential loop then index it in place.
    data = load_dataset(DatasetSpec(name="fashion-mnist"), [data_root()], seed=0).to(device)
    probe_steps = args.overhead_steps or data.train_size // BATCH
    print(
        f"paper model on Fashion-MNIST ({data.train_size} train), B = {BATCH}, {device}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    # Warm-up: first calls pay one-off costs (allocator, vmap set-up, lazy imports).
    time_population(data, make_configs(2, 5), device, None, None)
    time_sequential(data, make_configs(1, 5), device)

    rows = throughput(data, device, [int(s) for s in args.sizes.split(",")], steps, args.repeats)
    cost = overhead(data, device, overhead_members, 20, probe_steps, args.repeats)

    print()
    print(f"{'members':>7} {'population':>14} {'sequential':>14} {'speed-up':>9}")
    print(f"{'':>7} {'samples/s':>14} {'samples/s':>14} {'':>9}")
    for r in rows:
        print(
            f"{r['members']:>7} {r['population_samples_per_s']:>14,.0f} "
            f"{r['sequential_samples_per_s']:>14,.0f} {r['speedup']:>8.2f}×"
        )
    e2e = cost["end_to_end"]
    print()
    print(
        f"measurement overhead at the default intervals (measure every {cost['measure_every']}, "
        f"evaluate every {cost['eval_every']} steps), {cost['members']} members:"
    )
    print(
        f"  one step {cost['step_ms']:.1f} ms, one measurement {cost['measurement_ms']:.1f} ms, "
        f"one evaluation {cost['evaluation_ms']:.1f} ms → steady state "
        f"{cost['steady_state_percent']:.1f}% of probe time"
    )
    print(
        f"  end to end over {e2e['steps']} steps ({e2e['epochs']:.2f} epochs, {e2e['records']} "
        f"records, {e2e['evaluations']} evaluations): {e2e['default_seconds']:.1f} s vs "
        f"{e2e['off_seconds']:.1f} s without → {e2e['percent']:.1f}%"
    )

    info["load_average_at_end"] = list(os.getloadavg())
    result = {
        "benchmark": "probe_throughput",
        "command": " ".join(["benchmarks/probe_throughput.py", *sys.argv[1:]]),
        "model": "paper MLP: 784 → Linear(784, 784, no bias) → tanh → Linear(784, 10)",
        "dataset": f"fashion-mnist, {data.train_size} training examples",
        "batch_size": BATCH,
        "timing": f"best of {args.repeats} interleaved runs; population runs include building "
        "and stacking the members and the step-0 and final measurements",
        "machine": info,
        "throughput": rows,
        "measurement_overhead": cost,
        "seconds_total": time.perf_counter() - started,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
