"""Which way to the edge trains better within a fixed budget on the paper model?

Compares, at B = 32 and a 20-epoch budget on real Fashion-MNIST (test set):
- edge at the end, no decay: (η 0.01, α 0.9), whose J reaches ≈ 1 at epoch 20;
- saturating: (η 0.038, α 0.9, weight_decay 1e-4 = k/(2S), the simple theory's edge decay),
  ~4× the effective learning rate so the relaxation gets close to the edge in time;
- in between: (η 0.02, α 0.9, weight_decay 5e-5).
The recommendation engine's default strategy (worker/law.py, choose_config) follows it.

    python benchmarks/decay_strategy.py [--epochs 20] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from app.schemas import DatasetSpec, MLPSpec, RecommendationSpec
from worker.data import load_dataset
from worker.law import order_series
from worker.probe import ProbeConfig, cpu_model, init_model, pick_device, run_population

CONFIGS = [(0.01, 0.9, 0.0), (0.038, 0.9, 1e-4), (0.02, 0.9, 5e-5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-root", default=os.environ.get("EDGETUNE_DATA_ROOT", "../shared/datasets")
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    # The paper's network and data (model and dataset are required in a spec).
    spec = RecommendationSpec(model=MLPSpec(), dataset=DatasetSpec(name="fashion-mnist"))
    data = load_dataset(spec.dataset, [Path(args.data_root)])
    device = pick_device()
    steps = round(args.epochs * data.train_size / args.batch)
    configs = [ProbeConfig(eta, a, wd, args.batch, args.seed, steps) for eta, a, wd in CONFIGS]
    start = time.time()
    results = run_population(
        spec.model,
        data,
        configs,
        device=device,
        keep_params=True,
        measure_every=steps // 40,
        eval_every=(steps // 40) * 10,
    )
    rows = []
    for config, result in zip(configs, results, strict=True):
        model = init_model(spec.model, data, config.seed)
        assert result.params is not None
        model.load_state_dict(result.params, strict=False)
        model.eval()
        with torch.no_grad():
            logits = model(data.x_test)
            accuracy = float((logits.argmax(1) == data.y_test).float().mean())
            loss = float(torch.nn.functional.cross_entropy(logits, data.y_test))
        _, y = order_series(result.records, "J2")
        rows.append(
            {
                "learning_rate": config.learning_rate,
                "momentum": config.momentum,
                "weight_decay": config.weight_decay,
                "batch_size": config.batch_size,
                "seed": config.seed,
                "outcome": result.outcome,
                "test_accuracy": accuracy,
                "test_loss": loss,
                "J_final": float(y[-1]) ** 0.5,
                "J_trajectory": [round(float(v) ** 0.5, 3) for v in y[:: max(1, len(y) // 10)]],
            }
        )
        print(json.dumps(rows[-1]))
    report = {
        "benchmark": "decay_strategy",
        "epochs": args.epochs,
        "seconds": time.time() - start,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "device": str(device),
            "torch": torch.__version__,
            "load_average": os.getloadavg(),
        },
        "runs": rows,
    }
    out = Path(args.out or f"benchmarks/results/decay_strategy_{device.type}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
