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

Every timing is the best of `--repeats` runs (at least 3 for the overhead), variants interleaved,
in wall time and in this process's CPU time: the machines this runs on may be shared, and the
minimum (on a CPU, of a single-threaded run's CPU time above all) is the least disturbed estimate.

    .venv/bin/python benchmarks/probe_throughput.py [--device cuda] [--steps N] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from app.schemas import DatasetSpec, MLPSpec
from worker.data import Dataset, load_dataset
from worker.probe import (
    ProbeConfig,
    cpu_model,
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


@dataclass(frozen=True)
class Timing:
    """Wall seconds, and CPU seconds of this process (all threads). On a shared CPU the CPU time
    of a single-threaded run is the steadier estimate of what the run costs on its own."""

    wall: float
    cpu: float


def timed(device: torch.device, fn: Callable[[], object]) -> Timing:
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def time_population(
    data: Dataset,
    configs: list[ProbeConfig],
    device: torch.device,
    measure_every: int | None,
    eval_every: int | None,
) -> Timing:
    return timed(
        device,
        lambda: run_population(
            MODEL, data, configs, device=device, measure_every=measure_every, eval_every=eval_every
        ),
    )


def time_sequential(data: Dataset, configs: list[ProbeConfig], device: torch.device) -> Timing:
    return timed(device, lambda: [train_sequential(MODEL, data, c, device=device) for c in configs])


def best(runs: list[Timing]) -> Timing:
    return Timing(min(r.wall for r in runs), min(r.cpu for r in runs))


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
        pop, seq = best(population), best(sequential)
        samples = members * BATCH * steps
        rows.append(
            {
                "members": members,
                "steps": steps,
                "config_samples": samples,
                "population_samples_per_s": samples / pop.wall,
                "sequential_samples_per_s": samples / seq.wall,
                "speedup": seq.wall / pop.wall,
                "population_samples_per_cpu_s": samples / pop.cpu,
                "sequential_samples_per_cpu_s": samples / seq.cpu,
                "speedup_cpu_time": seq.cpu / pop.cpu,
                "population_runs": [asdict(t) for t in population],
                "sequential_runs": [asdict(t) for t in sequential],
            }
        )
        print(
            f"  {members:>3} members: population {pop.wall:7.2f} s ({pop.cpu:.2f} s CPU), "
            f"sequential {seq.wall:7.2f} s ({seq.cpu:.2f} s CPU)",
            flush=True,
        )
    return rows


def overhead(
    data: Dataset, device: torch.device, members: int, steps: int, probe_steps: int, repeats: int
) -> dict[str, Any]:
    measure_every, eval_every = default_intervals(data.train_size, BATCH)
    # Steady state: short runs that measure (and evaluate) at every step, against none.
    short = make_configs(members, steps)
    off, measured, evaluated = [], [], []
    for _ in range(max(3, repeats)):
        off.append(time_population(data, short, device, 0, 0))
        measured.append(time_population(data, short, device, 1, 0))
        evaluated.append(time_population(data, short, device, 1, 1))

    def steady(clock: str) -> dict[str, float]:
        t_off, t_measured, t_evaluated = (
            getattr(best(runs), clock) for runs in (off, measured, evaluated)
        )
        step = t_off / steps
        measurement = (t_measured - t_off) / steps
        evaluation = (t_evaluated - t_measured) / steps
        percent = 100 * (measurement / measure_every + evaluation / eval_every) / step
        return {
            "step_ms": 1e3 * step,
            "measurement_ms": 1e3 * measurement,
            "evaluation_ms": 1e3 * evaluation,
            "percent": percent,
        }

    # End to end: one probe of `probe_steps` with the default intervals against none.
    long = make_configs(members, probe_steps)
    default_runs, off_runs = [], []
    for _ in range(max(3, repeats)):
        default_runs.append(time_population(data, long, device, None, None))
        off_runs.append(time_population(data, long, device, 0, 0))
    with_default, without = best(default_runs), best(off_runs)
    # Records beyond the two that runs without measurements take too (step 0 and the last step).
    points = len({0, probe_steps} | set(range(0, probe_steps + 1, measure_every)))
    evals = len({0, probe_steps} | set(range(0, probe_steps + 1, eval_every)))
    parts = {"wall": steady("wall"), "cpu": steady("cpu")}

    def predicted(clock: str) -> float:
        p = parts[clock]
        extra = (points - 2) * p["measurement_ms"] + evals * p["evaluation_ms"]
        return 100 * extra / (probe_steps * p["step_ms"])

    def spread(clock: str) -> float:
        times = [getattr(t, clock) for t in off_runs]
        return 100 * (max(times) - min(times)) / min(times)

    return {
        "members": members,
        "measure_every": measure_every,
        "eval_every": eval_every,
        "steady_state": parts,
        "end_to_end": {
            "steps": probe_steps,
            "epochs": probe_steps * BATCH / data.train_size,
            "records": points,
            "evaluations": evals,
            "predicted_percent_wall": predicted("wall"),
            "predicted_percent_cpu": predicted("cpu"),
            "percent_wall": 100 * (with_default.wall - without.wall) / without.wall,
            "percent_cpu": 100 * (with_default.cpu - without.cpu) / without.cpu,
            # How far identical runs without measurements differ: the noise of the line above.
            "spread_of_identical_runs_percent_wall": spread("wall"),
            "spread_of_identical_runs_percent_cpu": spread("cpu"),
            "default_runs": [asdict(t) for t in default_runs],
            "off_runs": [asdict(t) for t in off_runs],
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
    steps = args.steps or (500 if gpu else 60)
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
    print(f"{'':>7} {'config-samples per second (wall)':^33} {'per CPU-second':^33}")
    print(f"{'members':>7} {'population':>11} {'sequential':>11} {'speed-up':>9} "
          f"{'population':>11} {'sequential':>11} {'speed-up':>9}")  # fmt: skip
    for r in rows:
        print(
            f"{r['members']:>7} {r['population_samples_per_s']:>11,.0f} "
            f"{r['sequential_samples_per_s']:>11,.0f} {r['speedup']:>8.2f}× "
            f"{r['population_samples_per_cpu_s']:>11,.0f} "
            f"{r['sequential_samples_per_cpu_s']:>11,.0f} {r['speedup_cpu_time']:>8.2f}×"
        )
    print()
    print(
        f"measurement overhead at the default intervals (measure every {cost['measure_every']}, "
        f"evaluate every {cost['eval_every']} steps), {cost['members']} members:"
    )
    for clock in ("wall", "cpu"):
        s = cost["steady_state"][clock]
        print(
            f"  steady state ({clock:>4} time): step {s['step_ms']:.1f} ms, measurement "
            f"{s['measurement_ms']:.1f} ms, evaluation {s['evaluation_ms']:.1f} ms "
            f"→ {s['percent']:.1f}% of probe time"
        )
    e2e = cost["end_to_end"]
    print(
        f"  one probe of {e2e['steps']} steps ({e2e['epochs']:.2f} epochs, {e2e['records']} "
        f"records, {e2e['evaluations']} evaluations): from the costs above "
        f"{e2e['predicted_percent_wall']:.1f}% (wall), {e2e['predicted_percent_cpu']:.1f}% (CPU);"
    )
    print(
        f"    timed end to end {e2e['percent_wall']:+.1f}% (wall), {e2e['percent_cpu']:+.1f}% "
        f"(CPU), while identical runs differ by {e2e['spread_of_identical_runs_percent_wall']:.1f}%"
        f" (wall), {e2e['spread_of_identical_runs_percent_cpu']:.1f}% (CPU)"
    )

    info["load_average_at_end"] = list(os.getloadavg())
    result = {
        "benchmark": "probe_throughput",
        "command": " ".join(["benchmarks/probe_throughput.py", *sys.argv[1:]]),
        "model": "paper MLP: 784 → Linear(784, 784, no bias) → tanh → Linear(784, 10)",
        "dataset": f"fashion-mnist, {data.train_size} training examples",
        "batch_size": BATCH,
        "timing": f"best of {args.repeats} interleaved runs (overhead: of "
        f"{max(3, args.repeats)}), wall and process CPU time; population runs include building "
        "and stacking the members and the step-0 and final measurements; throughput runs "
        "measure only at step 0 and the last step (J, chi), the sequential loop not at all",
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
