"""The training-loop monitor's overhead (edgetune.monitor), on the paper's model.

    .venv/bin/python benchmarks/monitor_overhead.py [--steps 500] [--repeats 15] [--every 50]

A plain PyTorch loop (torch.optim.SGD, η 0.02, α 0.9, B 32, Fashion-MNIST from the data root),
one thread, with and without a Monitor stepped after every optimizer step. Each arm trains
`steps` steps (a fraction of an epoch) from the same initial weights on the same batches; the
arms alternate, `repeats` pairs, and the overhead is the median over pairs of with/without − 1,
in wall time and in the thread's CPU time (the latter is less disturbed by other processes on a
busy machine). A second figure accounts for it directly: the median cost of one measurement,
divided by `every` median training steps. Writes benchmarks/results/monitor_overhead_cpu.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.schemas import DatasetSpec, MLPSpec  # noqa: E402
from benchmarks.recommend_fmnist import machine  # noqa: E402
from benchmarks.suite import git_revision, write_json  # noqa: E402
from edgetune.monitor import DEFAULT_EVERY, Monitor, couplings, hidden_weights  # noqa: E402
from edgetune.nets import seeded_model  # noqa: E402
from worker.data import Dataset, load_dataset  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "monitor_overhead_cpu.json"
BATCH = 32
# Within the bound: the monitor may cost at most 2 % of the training.
BOUND = 0.02


def train(
    dataset: Dataset, state: dict[str, torch.Tensor], steps: int, every: int | None
) -> tuple[float, float]:
    """(wall, thread CPU) seconds of `steps` SGD steps from `state`, monitored every `every`
    steps (None: no monitor). The same batches every call."""
    model = seeded_model(MLPSpec(), dataset.input_shape, dataset.num_classes, 0)
    model.load_state_dict(state)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    order = torch.randperm(dataset.train_size, generator=torch.Generator().manual_seed(1))
    x, y = dataset.x_train, dataset.y_train
    wall, cpu = time.perf_counter(), time.thread_time()
    monitor = Monitor(model, every=every) if every is not None else None
    for step in range(steps):
        idx = order[step * BATCH : (step + 1) * BATCH]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if monitor is not None:
            monitor.step()
    return time.perf_counter() - wall, time.thread_time() - cpu


def measurement_seconds(dataset: Dataset, calls: int = 200) -> float:
    """The median wall time of one measurement of the paper model's J."""
    model = seeded_model(MLPSpec(), dataset.input_shape, dataset.num_classes, 0)
    weights = hidden_weights(model)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        couplings(weights)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    dataset = load_dataset(DatasetSpec(), [Path(args.data_root)])
    if args.steps * BATCH > dataset.train_size:
        raise SystemExit(f"--steps {args.steps} is more than one epoch")
    state = seeded_model(MLPSpec(), dataset.input_shape, dataset.num_classes, 0).state_dict()
    train(dataset, state, 50, None)  # warm-up: allocator, kernels
    pairs: list[dict[str, float]] = []
    for r in range(args.repeats):
        arms = [None, args.every] if r % 2 == 0 else [args.every, None]
        timed = {every: train(dataset, state, args.steps, every) for every in arms}
        (plain_wall, plain_cpu), (mon_wall, mon_cpu) = timed[None], timed[args.every]
        pairs.append(
            {
                "plain_wall": plain_wall,
                "monitored_wall": mon_wall,
                "plain_cpu": plain_cpu,
                "monitored_cpu": mon_cpu,
            }
        )
    step_seconds = statistics.median(p["plain_wall"] for p in pairs) / args.steps
    one = measurement_seconds(dataset)
    wall = [p["monitored_wall"] / p["plain_wall"] - 1 for p in pairs]
    cpu = [p["monitored_cpu"] / p["plain_cpu"] - 1 for p in pairs]
    overhead = {
        "wall": statistics.median(wall),
        "cpu": statistics.median(cpu),
        "accounted": one / (args.every * step_seconds),
        # How much the pairs scatter (other processes on the machine): the paired figures are
        # only as good as this; the accounted one does not depend on it.
        "wall_quartiles": statistics.quantiles(wall, n=4),
        "cpu_quartiles": statistics.quantiles(cpu, n=4),
    }
    return {
        "benchmark": "monitor_overhead",
        "command": "benchmarks/monitor_overhead.py " + " ".join(sys.argv[1:]),
        "git": git_revision(),
        "machine": machine(torch.device("cpu")),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": "paper MLP (MLPSpec()): 784 → Linear(784, 784, no bias) → tanh → Linear(784, 10)",
        "dataset": f"fashion-mnist, {dataset.train_size} training examples",
        "loop": f"torch.optim.SGD lr 0.02, momentum 0.9, batch {BATCH}, {args.steps} steps per arm",
        "every": args.every,
        "repeats": args.repeats,
        "step_seconds": step_seconds,
        "measurement_seconds": one,
        "pairs": pairs,
        "overhead": overhead,
        "bound": BOUND,
        "within_bound": overhead["cpu"] <= BOUND and overhead["accounted"] <= BOUND,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="steps per arm (1,718 an epoch)")
    parser.add_argument("--repeats", type=int, default=15, help="pairs of arms")
    parser.add_argument("--every", type=int, default=DEFAULT_EVERY, help="monitor interval")
    parser.add_argument(
        "--data-root",
        default=os.environ.get("EDGETUNE_DATA_ROOT", str(REPO.parent / "shared" / "datasets")),
    )
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    result = run(args)
    write_json(args.out, result)
    o = result["overhead"]
    print(
        f"monitor every {args.every} steps on the paper model, 1 thread: overhead "
        f"{o['wall']:+.2%} wall, {o['cpu']:+.2%} CPU (median of {args.repeats} pairs of "
        f"{args.steps} steps; CPU quartiles {o['cpu_quartiles'][0]:+.2%} … "
        f"{o['cpu_quartiles'][2]:+.2%}); accounted {o['accounted']:.3%} (one measurement "
        f"{result['measurement_seconds'] * 1e3:.3f} ms, one step {result['step_seconds'] * 1e3:.2f}"
        f" ms); within {BOUND:.0%}: {result['within_bound']}"
    )
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
