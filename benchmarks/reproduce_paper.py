"""Reproduce arXiv 2107.09437 on real Fashion-MNIST with the probe engine and the fits.

The paper's network (784 → Linear(784, 784, no bias) → tanh → Linear(784, 10); hidden weights
N(0, 0.5²/784), Glorot read-out) trained with SGD + momentum, no weight decay, on the full 60,000
training images; test loss and accuracy on the 10,000 test images. One `run_population` per batch
size trains every configuration of that size together; the engine's periodic validation
evaluation is pointed at the test set (the dataset's validation split *is* the test split here),
so every evaluation record is the paper's test evaluation.

What it measures, beside the targets of shared/docs/science.md §3 and §5:

1. J_init and J0 at step 0 (0.5 and ≈ 0).
2. R² of J² linear in time over the ordered part (after the epoch-1 transient, while J < 1).
3. k = median over ordered configs of the J² slope × (1−α)B/η (10–13 per epoch), and the
   exponents of the growth rate A in η, 1/B and 1/(1−α) from `fit_scaling` (each 1 ± 0.1).
4. t_edge = 0.75·(1−α)·B/(k·η) with the measured k (strictly (1 − J_init²)/A) against the epoch
   J first reaches 1 (interpolated), for every config that reaches the edge (within 20 %).
5. J at the minimum test loss (0.9–1.1), for configs that reach the edge and run past it.
6. Equal η/B at fixed α: the J² and test-loss curves against epoch overlap.
7. (shown, not judged) the collapse of J² against epoch·η/((1−α)B) below the edge.

    .venv/bin/python benchmarks/reproduce_paper.py [--mode cpu|gpu] [--workers N] [--out DIR]

`--mode cpu` (the default without CUDA) is sized to finish in under 15 minutes on a 2-core CPU:
ten configurations, 6–13 epochs each (eight measured 493 s on one thread at a load average of ~3).
`--mode gpu` runs the paper's length (60 epochs) over a 45-config grid. `--mode smoke` runs the
whole pipeline in seconds on a subset (for the tests). The script exits 0 whether or not the
targets are met; it prints PASS/FAIL beside each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.schemas import EDGE, DatasetSpec, MLPSpec
from worker import fit
from worker.data import Dataset, load_dataset
from worker.law import order_series
from worker.probe import (
    ProbeConfig,
    ProbeProgress,
    ProbeRecord,
    ProbeResult,
    cpu_model,
    run_population,
)

REPO = Path(__file__).resolve().parents[1]
MODEL = MLPSpec()  # the paper's network
SEED = 0  # one seed for every config: the same initial W, as in a grid of single runs
MEASURES_PER_EPOCH = 20
LOAD_SAMPLE_SECONDS = 15.0

# Acceptance lines (issue 2) and the reference values measured on this data (science.md §3).
K_RANGE = (10.0, 13.0)
EXPONENT_TOLERANCE = 0.1  # science.md §5 item 3: within 1 ± 0.1
T_EDGE_TOLERANCE = 0.20
J_AT_MIN_LOSS = (0.9, 1.1)  # science.md §5 item 5
MIN_R2 = 0.98
J_INIT = 0.5
J_INIT_TOLERANCE = 0.01  # relative; a 784² Gaussian matrix gives J to ~0.1 %
J0_TOLERANCE = 0.1  # std of J0 at init is 0.5/√784 ≈ 0.018
# Two curves "overlap": J² apart by at most this anywhere (J² runs 0.25 → 1 on the way to the edge)
# and smoothed test loss apart by at most that on average after epoch 1 (test loss falls by ~0.2
# over the run; single evaluations scatter by ±0.03 around their trend at these learning rates).
OVERLAP_J2 = 0.05
OVERLAP_TEST_LOSS = 0.02
# Test loss is smoothed with a centred running mean over this many epochs before its minimum is
# located or two curves are compared: at η/(1−α) = 0.2–0.4 single evaluations jump by ±0.03–0.05
# from one to the next (the iterate bounces), more than the trend over several epochs, so the
# minimum of the raw curve is mostly noise.
SMOOTH_EPOCHS = 1.0
# The J² slope fits start here: single-epoch increments are 1.5–2.5× the steady rate in epoch 1
# and still ~1.3× in epoch 2 at α = 0 (measured on this data); science.md: "from epoch 2 on ...
# steady".
TRANSIENT_EPOCHS = 2.0
# A config "runs past the edge" when it trains at least this long after J first reaches 1, so
# the minimum of its test loss can lie on either side of the edge.
PAST_EDGE_EPOCHS = 1.0

TARGETS = {
    "1": "J_init 0.5, J0 ≈ 0 (|J0| < 0.1)",
    "2": f"R² > {MIN_R2} for every ordered config",
    "3k": "10–13 per epoch (science.md: 10.7–12.8, median ≈ 11; paper ≈ 11)",
    "3e": f"1 ± {EXPONENT_TOLERANCE:g} each (science.md §5)",
    "4": "within 20 % (science.md: 43.6/42, 21.8/21, 10.9/10 epochs)",
    "5": "0.9–1.1 (science.md §5; its grid measured 0.9–1.12); loss smoothed over 1 epoch",
    "6": f"overlap: max |ΔJ²| ≤ {OVERLAP_J2}, mean |Δ smoothed test loss| ≤ {OVERLAP_TEST_LOSS}",
    "7": "one line below the edge (shown, not judged)",
}


@dataclass(frozen=True)
class Run:
    """One configuration of the reproduction: SGD (η, α, B), no weight decay, `epochs` long."""

    eta: float
    alpha: float
    batch: int
    epochs: float

    @property
    def rate(self) -> float:
        """η/((1−α)B): the growth rate A per epoch is k times this."""
        return self.eta / ((1 - self.alpha) * self.batch)

    @property
    def label(self) -> str:
        return f"η {self.eta:g}, α {self.alpha:g}, B {self.batch}"

    def config(self, train_size: int) -> ProbeConfig:
        steps = round(self.epochs * (train_size // self.batch))
        return ProbeConfig(self.eta, self.alpha, 0.0, self.batch, SEED, steps)


# CPU: η/((1−α)B) from 6.25e-4 to 6.25e-3, the range of science.md's measured t_edge table (its
# fastest config, 10.9 epochs, sits at 6.25e-3). The three configs at 6.25e-3 (η 0.02/0.04/0.08 at
# B 32/64/128, α 0.9) reach the edge at t_edge = 0.75·(1−α)B/(11·η) ≈ 10.9 epochs and run 13, past
# it (items 4, 5); they and 0.01/32 = 0.02/64 = 0.04/128 are the equal-η/B families of item 6.
# With α 0/0.5 at η 0.02 they pin k and the exponents (η at each batch size, B 32/64/128, α 0/0.5/
# 0.9); the slow ones need only a few epochs after the transient for a slope.
# The two fast configs, η/((1−α)B) = 9.4e-3 and 1.25e-2 (η/(1−α) = 0.6 at B 64, 0.4 at B 32), are
# in on purpose (issue 12): there the steady J² growth per epoch was 13–17 × η/((1−α)B), not 11,
# the linear law bends, and the edge comes 20–36 % sooner than the law says. A reproduction that
# left them out would pass by choosing its range; with them the exponents' misses are printed.
CPU_RUNS = (
    Run(0.01, 0.9, 32, 8),
    Run(0.02, 0.9, 32, 13),
    Run(0.02, 0.5, 32, 6),
    Run(0.02, 0.0, 32, 6),
    Run(0.02, 0.9, 64, 8),
    Run(0.04, 0.9, 64, 13),
    Run(0.04, 0.9, 128, 8),
    Run(0.08, 0.9, 128, 13),
    Run(0.06, 0.9, 64, 8),
    Run(0.04, 0.9, 32, 6),
)
# GPU: the paper's length over a grid like the paper's (chaotic corners included).
GPU_RUNS = tuple(
    Run(eta, alpha, batch, 60)
    for batch in (32, 64, 128)
    for alpha in (0.0, 0.5, 0.9)
    for eta in (0.005, 0.01, 0.02, 0.05, 0.1)
)
# Smoke: the whole pipeline in seconds on 2048 training and 500 test images (tests only; the
# numbers mean little).
SMOKE_RUNS = (
    Run(0.05, 0.9, 32, 4),
    Run(0.1, 0.9, 32, 4),
    Run(0.05, 0.5, 32, 4),
    Run(0.1, 0.9, 64, 4),
)
MODES: dict[str, dict[str, Any]] = {
    "cpu": {"runs": CPU_RUNS, "evals_per_epoch": 4, "max_train": None, "test_examples": None},
    "gpu": {"runs": GPU_RUNS, "evals_per_epoch": 4, "max_train": None, "test_examples": None},
    "smoke": {"runs": SMOKE_RUNS, "evals_per_epoch": 2, "max_train": 2048, "test_examples": 500},
}


def data_root() -> Path:
    return Path(os.environ.get("EDGETUNE_DATA_ROOT", REPO.parent / "shared" / "datasets"))


def paper_dataset(
    root: Path, max_train: int | None = None, test_examples: int | None = None
) -> Dataset:
    """Fashion-MNIST with the full training set and the test set as the 'validation' split."""
    spec = DatasetSpec(name="fashion-mnist", validation_fraction=0.0, max_train_samples=max_train)
    data = load_dataset(spec, [root])
    n = data.x_test.shape[0] if test_examples is None else test_examples
    return dataclasses.replace(data, x_val=data.x_test[:n], y_val=data.y_test[:n])


@dataclass
class Series:
    """One trained configuration and what the analysis reads from it."""

    run: Run
    result: ProbeResult

    @property
    def records(self) -> list[ProbeRecord]:
        return self.result.records

    def j2(self) -> tuple[np.ndarray, np.ndarray]:
        return order_series(self.records, "J2")

    def evals(self) -> list[ProbeRecord]:
        return [r for r in self.records if r.val_loss is not None]

    def test_loss(self) -> tuple[np.ndarray, np.ndarray]:
        evals = self.evals()
        return (
            np.array([r.epoch for r in evals], dtype=float),
            np.array([r.val_loss for r in evals], dtype=float),
        )


def smoothed(t: np.ndarray, y: np.ndarray, window: float = SMOOTH_EPOCHS) -> np.ndarray:
    """Centred running mean: each point is the mean of the points within ±window/2 of it."""
    return np.array([float(y[np.abs(t - ti) <= window / 2 + 1e-9].mean()) for ti in t])


def train_group(
    runs: list[Run], data: Dataset, device: torch.device, evals_per_epoch: int
) -> list[Series]:
    """Train runs that share one batch size as one population; progress lines on stderr."""
    batch = runs[0].batch
    steps_per_epoch = data.train_size // batch
    measure_every = max(1, round(steps_per_epoch / MEASURES_PER_EPOCH))
    eval_every = max(1, round(steps_per_epoch / evals_per_epoch))
    configs = [r.config(data.train_size) for r in runs]
    next_report = [0.0]

    def report(p: ProbeProgress) -> bool:
        epoch = p.step / steps_per_epoch
        if epoch >= next_report[0]:
            total = p.steps_total / steps_per_epoch
            load = os.getloadavg()[0]
            print(
                f"  B {batch}: epoch {epoch:5.2f}/{total:g}, {p.seconds:6.0f} s, load {load:.1f}",
                file=sys.stderr,
                flush=True,
            )
            next_report[0] = math.floor(epoch) + 1.0
        return True

    results = run_population(
        MODEL,
        data,
        configs,
        device=device,
        measure_every=measure_every,
        eval_every=eval_every,
        on_progress=report,
        # The service evaluates on at most 2000 validation examples; the paper's test loss is
        # over all 10,000 test images (≈ 12 % of the CPU run at 3 evaluations per epoch).
        val_examples=int(data.x_val.shape[0]),
    )
    return [Series(run, result) for run, result in zip(runs, results, strict=True)]


def _train_group_in_process(
    runs: list[Run], mode: str, root: str, device: str, threads: int
) -> list[Series]:
    """A worker process: its own copy of the data and its own threads."""
    torch.set_num_threads(threads)
    settings = MODES[mode]
    data = paper_dataset(Path(root), settings["max_train"], settings["test_examples"])
    return train_group(runs, data, torch.device(device), settings["evals_per_epoch"])


def train_all(
    mode: str, root: Path, device: torch.device, workers: int, threads: int
) -> list[Series]:
    """Every run, one population per batch size, largest population first; in `workers`
    processes when > 1 (on a CPU each population then has a core of its own)."""
    settings = MODES[mode]
    runs: tuple[Run, ...] = settings["runs"]
    groups: dict[int, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.batch, []).append(run)
    ordered = sorted(groups.values(), key=lambda g: -sum(r.epochs / r.batch for r in g))
    by_run: dict[Run, Series] = {}
    if workers <= 1:
        data = paper_dataset(root, settings["max_train"], settings["test_examples"])
        for group in ordered:
            for s in train_group(group, data, device, settings["evals_per_epoch"]):
                by_run[s.run] = s
    else:
        context = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [
                pool.submit(_train_group_in_process, g, mode, str(root), str(device), threads)
                for g in ordered
            ]
            for future in futures:
                for s in future.result():
                    by_run[s.run] = s
    return [by_run[r] for r in runs]


# ---------------------------------------------------------------------------------------------
# Analysis


def edge_crossing(t: np.ndarray, y: np.ndarray, edge: float = EDGE) -> float | None:
    """The epoch y first reaches `edge`, linearly interpolated between records; None if never."""
    above = np.flatnonzero(y >= edge)
    if above.size == 0:
        return None
    i = int(above[0])
    if i == 0:
        return float(t[0])
    return float(t[i - 1] + (edge - y[i - 1]) * (t[i] - t[i - 1]) / (y[i] - y[i - 1]))


def _verdict(ok: bool | None) -> str:
    return "N/A" if ok is None else ("PASS" if ok else "FAIL")


def _item(item: str, name: str, target: str, measured: str, ok: bool | None) -> dict[str, Any]:
    return {
        "item": item,
        "name": name,
        "target": target,
        "measured": measured,
        "verdict": _verdict(ok),
    }


def _short(run: Run) -> str:
    return f"η {run.eta:g}, B {run.batch}"


def analyse(series: list[Series], transient: float) -> dict[str, Any]:
    """Every item's numbers and verdicts, and a per-config summary. Pure: no printing."""
    items: list[dict[str, Any]] = []
    per_config: list[dict[str, Any]] = []

    # 1. Initial order parameters.
    j_init = [s.records[0].J[0] for s in series]
    j0_init = [s.records[0].J0[0] for s in series]
    ok1 = all(abs(j / J_INIT - 1) <= J_INIT_TOLERANCE for j in j_init) and all(
        abs(j0) < J0_TOLERANCE for j0 in j0_init
    )
    items.append(
        _item(
            "1",
            "J_init, J0 at start",
            TARGETS["1"],
            f"J {np.mean(j_init):.4f}, J0 {np.mean(j0_init):+.4f}",
            ok1,
        )
    )

    # 2–3. Growth fits after the transient while J < 1.
    growth: list[fit.GrowthFit | None] = []
    notes: list[str | None] = []
    for s in series:
        t, y = s.j2()
        try:
            one = fit.fit_growth(t, y, t_min=transient, edge=EDGE)
        except fit.FitError as exc:
            growth.append(None)
            notes.append(str(exc))
            continue
        if one.chaotic:
            growth.append(None)
            notes.append("at or past the edge when the fit window starts")
        else:
            growth.append(one)
            notes.append(None)
    ordered = [
        (s, g) for s, g in zip(series, growth, strict=True) if g is not None and g.A.value > 0
    ]
    r2s = [g.r2 for _, g in ordered if g.r2 is not None]
    ok2 = bool(r2s) and min(r2s) > MIN_R2 if r2s else None
    items.append(
        _item(
            "2",
            "R² of J² linear in t (ordered part)",
            TARGETS["2"],
            f"min {min(r2s):.4f}, median {np.median(r2s):.4f} ({len(r2s)} configs)"
            if r2s
            else "no ordered config",
            ok2,
        )
    )
    ks = [g.A.value / s.run.rate for s, g in ordered]
    k = float(np.median(ks)) if ks else math.nan
    ok3k = K_RANGE[0] <= k <= K_RANGE[1] if ks else None
    items.append(
        _item(
            "3",
            "k = median slope·(1−α)B/η",
            TARGETS["3k"],
            f"{k:.2f} (range {min(ks):.2f}–{max(ks):.2f}, {len(ks)} configs)" if ks else "n/a",
            ok3k,
        )
    )
    scaling: fit.ScalingFit | None = None
    if len(ordered) >= 4:
        try:
            scaling = fit.fit_scaling(
                [g.A.value for _, g in ordered],
                [s.run.eta for s, _ in ordered],
                [s.run.batch for s, _ in ordered],
                [s.run.alpha for s, _ in ordered],
                A_se=[g.A.se for _, g in ordered],
            )
        except fit.FitError as exc:
            print(f"fit_scaling failed: {exc}", file=sys.stderr)
    labels = {"eta": "η", "batch": "1/B", "momentum": "1/(1−α)"}
    for knob in fit.KNOBS:
        e = scaling.exponent(knob) if scaling is not None else None
        if e is not None and e.fitted:
            v = e.value
            ok: bool | None = abs(v.value - 1) <= EXPONENT_TOLERANCE
            measured = f"{v.value:.3f} [{v.low:.3f}, {v.high:.3f}]"
        else:
            ok, measured = None, "not fitted (knob did not vary)" if e else "n/a"
        items.append(_item("3", f"exponent of A in {labels[knob]}", TARGETS["3e"], measured, ok))

    # 4–5. Time to the edge; J at the minimum test loss.
    oks4: list[bool] = []
    oks5: list[bool] = []
    for s, g, note in zip(series, growth, notes, strict=True):
        t, y = s.j2()
        crossing = edge_crossing(t, y)
        y_init = float(y[0])
        predicted = fit.edge_time(k * s.run.rate, y_init) if ks else math.nan
        row: dict[str, Any] = {
            "label": s.run.label,
            "eta": s.run.eta,
            "momentum": s.run.alpha,
            "batch_size": s.run.batch,
            "rate": s.run.rate,
            "epochs": s.run.epochs,
            "outcome": s.result.outcome,
            "reason": s.result.reason,
            "steps": s.result.steps_done,
            "seconds": s.result.seconds,
            "growth": g.to_dict() if g is not None else None,
            "growth_note": note,
            "k": g.A.value / s.run.rate if g is not None else None,
            "t_edge_predicted": predicted,
            # The same with the fitted line's own intercept (it carries the epoch-1 transient).
            "t_edge_line": fit.edge_time(g.A.value, g.y0.value) if g is not None else None,
            "t_edge_measured": crossing,
            "J_end": s.records[-1].J[0],
        }
        evals = s.evals()
        if evals:
            te, loss = s.test_loss()
            smooth = smoothed(te, loss)
            best = int(np.argmin(smooth))
            row["min_test_loss"] = float(smooth[best])  # smoothed
            row["epoch_at_min_test_loss"] = float(te[best])
            row["J_at_min_test_loss"] = evals[best].J[0]
            raw = int(np.argmin(loss))
            row["min_test_loss_raw"] = float(loss[raw])
            row["J_at_min_test_loss_raw"] = evals[raw].J[0]
            row["best_test_accuracy"] = max(r.val_accuracy or 0.0 for r in evals)
            row["final_test_loss"] = evals[-1].val_loss
            row["final_test_accuracy"] = evals[-1].val_accuracy
        if crossing is not None and crossing > 0 and math.isfinite(predicted):
            error = predicted / crossing - 1
            row["t_edge_error"] = error
            oks4.append(abs(error) <= T_EDGE_TOLERANCE)
            items.append(
                _item(
                    "4",
                    f"t_edge pred/meas ({s.run.label})",
                    TARGETS["4"],
                    f"{predicted:.2f} / {crossing:.2f} ({100 * error:+.0f} %)",
                    abs(error) <= T_EDGE_TOLERANCE,
                )
            )
        past = crossing is not None and float(t[-1]) >= crossing + PAST_EDGE_EPOCHS
        if past and evals:
            j_min = row["J_at_min_test_loss"]
            ok5 = J_AT_MIN_LOSS[0] <= j_min <= J_AT_MIN_LOSS[1]
            oks5.append(ok5)
            items.append(
                _item(
                    "5",
                    f"J at min test loss ({s.run.label})",
                    TARGETS["5"],
                    f"{j_min:.3f} at epoch {row['epoch_at_min_test_loss']:.2f} "
                    f"(loss {row['min_test_loss']:.4f}; raw min at J "
                    f"{row['J_at_min_test_loss_raw']:.3f})",
                    ok5,
                )
            )
        per_config.append(row)
    if not oks4:
        items.append(_item("4", "t_edge pred/meas", TARGETS["4"], "no config reached J = 1", None))
    if not oks5:
        items.append(
            _item("5", "J at min test loss", TARGETS["5"], "no config ran past the edge", None)
        )

    # 6. Equal η/B at fixed α: overlapping curves.
    pairs: list[dict[str, Any]] = []
    families: dict[tuple[float, float], list[Series]] = {}
    for s in series:
        families.setdefault((s.run.alpha, round(s.run.rate, 12)), []).append(s)
    for family in families.values():
        family = sorted(family, key=lambda s: s.run.batch)
        for other in family[1:]:
            pair = compare(family[0], other)
            pairs.append(pair)
            loss = pair["mean_abs_dtest_loss"]
            ok6 = pair["max_abs_dJ2"] <= OVERLAP_J2 and (loss is None or loss <= OVERLAP_TEST_LOSS)
            items.append(
                _item(
                    "6",
                    f"equal η/B, α {family[0].run.alpha:g}: "
                    f"({_short(family[0].run)}) vs ({_short(other.run)})",
                    TARGETS["6"],
                    f"max |ΔJ²| {pair['max_abs_dJ2']:.4f}, mean |Δ test loss| "
                    + (f"{loss:.4f}" if loss is not None else "n/a")
                    + f" at epoch {pair['common_epochs']:.1f}",
                    ok6,
                )
            )

    # 7. The collapse: one line J² = J_init² + k·τ, τ = epoch·η/((1−α)B), below the edge.
    taus, ys = [], []
    for s in series:
        t, y = s.j2()
        keep = (t >= transient) & (y < EDGE) & np.isfinite(y)
        taus.append(t[keep] * s.run.rate)
        ys.append(y[keep])
    collapse: dict[str, Any] | None = None
    if taus and sum(len(a) for a in taus) >= 4:
        tau, yy = np.concatenate(taus), np.concatenate(ys)
        slope, intercept = np.polyfit(tau, yy, 1)
        resid = yy - (intercept + slope * tau)
        r2 = 1 - float(np.sum(resid**2)) / float(np.sum((yy - yy.mean()) ** 2))
        collapse = {"k": float(slope), "intercept": float(intercept), "r2": r2, "n": len(yy)}
        items.append(
            _item(
                "7",
                "collapse J² vs epoch·η/((1−α)B)",
                TARGETS["7"],
                f"pooled line: k {slope:.2f}, intercept {intercept:.3f}, R² {r2:.4f}",
                None,
            )
        )

    return {
        "k": k,
        "transient_epochs": transient,
        "items": items,
        "configs": per_config,
        "scaling": scaling.to_dict() if scaling is not None else None,
        "pairs": pairs,
        "collapse": collapse,
        "all_pass": all(i["verdict"] == "PASS" for i in items if i["item"] in "123456"),
    }


def compare(a: Series, b: Series) -> dict[str, Any]:
    """J² and test loss of two runs against epoch over their common span (b interpolated onto
    a's measurement epochs)."""
    ta, ya = a.j2()
    tb, yb = b.j2()
    end = min(float(ta[-1]), float(tb[-1]))
    grid = ta[ta <= end]
    dj2 = np.abs(np.interp(grid, tb, yb) - np.interp(grid, ta, ya))
    mean_dloss: float | None = None
    final_dloss: float | None = None
    final_dacc: float | None = None
    if a.evals() and b.evals():
        tea, la = a.test_loss()
        teb, lb = b.test_loss()
        sa, sb = smoothed(tea, la), smoothed(teb, lb)
        at = tea[(tea >= 1.0) & (tea <= min(end, float(teb[-1])))]
        if at.size:
            dloss = np.abs(np.interp(at, teb, sb) - np.interp(at, tea, sa))
            mean_dloss, final_dloss = float(dloss.mean()), float(dloss[-1])
            aa = np.array([r.val_accuracy for r in a.evals()], dtype=float)
            ab = np.array([r.val_accuracy for r in b.evals()], dtype=float)
            acc_a = np.interp(at[-1], tea, smoothed(tea, aa))
            acc_b = np.interp(at[-1], teb, smoothed(teb, ab))
            final_dacc = abs(float(acc_a) - float(acc_b))
    return {
        "a": a.run.label,
        "b": b.run.label,
        "common_epochs": end,
        "max_abs_dJ2": float(dj2.max()),
        "final_abs_dJ2": float(dj2[-1]),
        # Test loss and accuracy smoothed over SMOOTH_EPOCHS; mean over evaluations from epoch 1.
        "mean_abs_dtest_loss": mean_dloss,
        "final_abs_dtest_loss": final_dloss,
        "final_abs_dtest_accuracy": final_dacc,
    }


# ---------------------------------------------------------------------------------------------
# Output


def table(analysis: dict[str, Any]) -> str:
    lines = [f"{'item':<4} {'quantity':<52} {'measured':<46} {'target':<40} verdict"]
    for i in analysis["items"]:
        lines.append(
            f"{i['item']:<4} {i['name']:<52} {i['measured']:<46} {i['target']:<40} {i['verdict']}"
        )
    lines.append("")
    lines.append(
        f"{'config':<26} {'η/((1−α)B)':>10} {'ep':>4} {'A/epoch':>8} {'R²':>7} {'k':>6} "
        f"{'t_edge p/m':>12} {'J_end':>6} {'minTL':>7} {'J@min':>6} {'bestAcc':>7}"
    )
    for c in analysis["configs"]:
        g = c["growth"]
        pred = c["t_edge_predicted"]
        meas = c["t_edge_measured"]
        lines.append(
            f"{c['label']:<26} {c['rate']:>10.2e} {c['epochs']:>4g} "
            + (f"{g['A']['value']:>8.4f} {g['r2']:>7.4f} {c['k']:>6.2f} " if g else f"{'—':>24} ")
            + f"{(pred if pred is not None else math.nan):>5.1f}/"
            + (f"{meas:<6.2f}" if meas is not None else f"{'—':<6}")
            + f" {c['J_end']:>6.3f} {c.get('min_test_loss', math.nan):>7.4f} "
            + f"{c.get('J_at_min_test_loss', math.nan):>6.3f} "
            + f"{c.get('best_test_accuracy', math.nan):>7.4f}"
        )
    return "\n".join(lines)


def plot(series: list[Series], analysis: dict[str, Any], prefix: Path) -> list[Path]:
    """J² vs epoch (edge marked), the collapse plot, test loss vs J. PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = analysis["k"]
    colors = plt.get_cmap("tab10")
    paths = []

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, s in enumerate(series):
        t, y = s.j2()
        ax.plot(t, y, color=colors(i % 10), label=f"{s.run.label}  (η/((1−α)B) {s.run.rate:.2g})")
        crossing = edge_crossing(t, y)
        if crossing is not None:
            ax.plot([crossing], [EDGE], "o", color=colors(i % 10), ms=7)
        pred = analysis["configs"][i]["t_edge_predicted"]
        if pred is not None and math.isfinite(pred) and pred <= float(t[-1]):
            ax.plot([pred], [EDGE], "x", color=colors(i % 10), ms=9, mew=2)
    ax.axhline(EDGE, color="k", ls="--", lw=1, label="edge of chaos J = 1")
    ax.set_xlabel("epoch")
    ax.set_ylabel("J²")
    ax.set_title(
        f"J² vs epoch (● J reaches 1, × predicted 0.75(1−α)B/(kη), k = {k:.1f}); no weight decay",
        fontsize=9,
    )
    ax.set_ylim(0, max(1.6, min(4.0, max(float(np.max(s.j2()[1])) for s in series) * 1.05)))
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    paths.append(prefix.with_name(prefix.name + "_j2.png"))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5.5))
    tau_max = 0.0
    for i, s in enumerate(series):
        t, y = s.j2()
        tau = t * s.run.rate
        tau_max = max(tau_max, float(tau[y <= 1.6][-1]))  # the x range the y range shows
        ax.plot(tau, y, color=colors(i % 10), label=s.run.label)
    grid = np.linspace(0, tau_max, 50)
    y_init = float(np.mean([s.j2()[1][0] for s in series]))
    ax.plot(
        grid,
        y_init + k * grid,
        "-.",
        color="0.4",
        lw=1.2,
        label=f"law J_init² + k·τ, k = {k:.1f} (median of the time fits)",
    )
    collapse = analysis["collapse"]
    if collapse is not None:
        ax.plot(
            grid,
            collapse["intercept"] + collapse["k"] * grid,
            "k:",
            lw=1.5,
            label=f"one line fitted to all points below the edge: {collapse['intercept']:.3f} + "
            f"{collapse['k']:.1f}·τ",
        )
    ax.axhline(EDGE, color="k", ls="--", lw=1, label="edge J = 1")
    ax.set_xlim(0, tau_max * 1.02)
    ax.set_xlabel("τ = epoch · η / ((1−α)·B)")
    ax.set_ylabel("J²")
    ax.set_title("Scaling collapse: J² against epoch·η/((1−α)B)", fontsize=10)
    ax.set_ylim(0, 1.6)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    paths.append(prefix.with_name(prefix.name + "_collapse.png"))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.axvspan(*J_AT_MIN_LOSS, color="0.9", label="J 0.9–1.15")
    ax.axvline(EDGE, color="k", ls="--", lw=1, label="edge J = 1")
    for i, s in enumerate(series):
        evals = s.evals()
        if not evals:
            continue
        js = [r.J[0] for r in evals]
        te, losses = s.test_loss()
        smooth = smoothed(te, losses)
        ax.plot(js, losses, ".", color=colors(i % 10), alpha=0.35, ms=4)
        ax.plot(js, smooth, "-", color=colors(i % 10), label=s.run.label)
        best = int(np.argmin(smooth))
        ax.plot([js[best]], [smooth[best]], "*", color=colors(i % 10), ms=12)
    ax.set_xlabel("J")
    ax.set_ylabel("test loss")
    ax.set_title(
        "Test loss against J: dots single evaluations, lines a 1-epoch running mean (★ minimum)",
        fontsize=9,
    )
    ax.set_ylim(None, 0.6)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    paths.append(prefix.with_name(prefix.name + "_test_loss.png"))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def series_json(s: Series) -> dict[str, Any]:
    t, y = s.j2()
    evals = s.evals()
    return {
        "label": s.run.label,
        "epoch": t.tolist(),
        "J2": y.tolist(),
        "J0": [r.J0[0] for r in s.records],
        "train_loss": [r.train_loss for r in s.records],
        "test_epoch": [r.epoch for r in evals],
        "test_J": [r.J[0] for r in evals],
        "test_loss": [r.val_loss for r in evals],
        "test_accuracy": [r.val_accuracy for r in evals],
    }


def strict_json(value: Any) -> Any:
    """NaN and ±inf become None (null): the file stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    # `edgetune reproduce` runs this script: its usage then names the command the user typed.
    prog = os.environ.get("EDGETUNE_REPRODUCE_PROG") or None
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--mode", choices=sorted(MODES), default="gpu" if cuda else "cpu")
    parser.add_argument("--device", default=None, help="default: cuda in gpu mode, else cpu")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes, one population each (CPU: use 2 only on an otherwise idle 2-core box)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process (on a shared CPU more threads than free cores is "
        "~10× slower: measured)",
    )
    parser.add_argument(
        "--transient",
        type=float,
        default=TRANSIENT_EPOCHS,
        help="epochs left out at the start of each J² slope fit (science.md: the transient)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results",
        help="folder for the result JSON and the plots (default: benchmarks/results)",
    )
    args = parser.parse_args(argv)

    mode = MODES[args.mode]
    device = torch.device(args.device or ("cuda" if args.mode == "gpu" and cuda else "cpu"))
    torch.set_num_threads(args.threads)
    root = data_root()
    runs = mode["runs"]
    load_start = list(os.getloadavg())
    print(
        f"reproduce_paper --mode {args.mode}: {len(runs)} configs on {device}, "
        f"{args.workers} process(es) × {args.threads} thread(s); load {load_start[0]:.1f}",
        file=sys.stderr,
    )
    # The machine may be shared: sample the 1-minute load average through the run.
    loads: list[float] = []
    done = threading.Event()

    def sample_load() -> None:
        while not done.wait(LOAD_SAMPLE_SECONDS):
            loads.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample_load, daemon=True)
    sampler.start()
    start = time.perf_counter()
    series = train_all(args.mode, root, device, args.workers, args.threads)
    wall = time.perf_counter() - start
    done.set()
    load_end = list(os.getloadavg())
    analysis = analyse(series, args.transient)

    print(table(analysis))
    verdicts = [i["verdict"] for i in analysis["items"] if i["item"] != "7"]
    print(
        f"\nmode {args.mode} on {device} ({cpu_model()}): {wall:.0f} s wall; "
        f"load average at start {load_start[0]:.2f}, during {np.mean(loads or [math.nan]):.2f} "
        f"(mean of {len(loads)}), at end {load_end[0]:.2f}; "
        f"{verdicts.count('PASS')} PASS, {verdicts.count('FAIL')} FAIL, "
        f"{verdicts.count('N/A')} N/A"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.out / f"reproduce_paper_{args.mode}"
    machine: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": args.threads,
        "workers": args.workers,
        "python": platform.python_version(),
        "device": str(device),
        "load_average_at_start": load_start,
        "load_average_at_end": load_end,
        "load_average_1min_during": {
            "samples": len(loads),
            "every_seconds": LOAD_SAMPLE_SECONDS,
            "min": min(loads, default=None),
            "mean": float(np.mean(loads)) if loads else None,
            "max": max(loads, default=None),
        },
    }
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    out = {
        "benchmark": "reproduce_paper",
        "mode": args.mode,
        "command": "benchmarks/reproduce_paper.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "paper": "arXiv 2107.09437 (Zhang, Feng, Chen, Lai)",
        "model": "784 → Linear(784, 784, no bias) → tanh → Linear(784, 10); J_init 0.5; "
        "Glorot read-out",
        "dataset": f"fashion-mnist: {mode['max_train'] or 60000} training images; test loss and "
        f"accuracy on {mode['test_examples'] or 10000} test images",
        "optimizer": "SGD with momentum, no weight decay, seed 0 for every config",
        "settings": {
            "measures_per_epoch": MEASURES_PER_EPOCH,
            "evals_per_epoch": mode["evals_per_epoch"],
            "transient_epochs": args.transient,
        },
        "machine": machine,
        "wall_seconds": wall,
        "targets": TARGETS,
        "all_pass": analysis["all_pass"],
        "items": analysis["items"],
        "k": analysis["k"],
        "scaling": analysis["scaling"],
        "collapse": analysis["collapse"],
        "pairs": analysis["pairs"],
        "configs": analysis["configs"],
        "series": [series_json(s) for s in series],
    }
    json_path = prefix.with_name(prefix.name + ".json")
    json_path.write_text(json.dumps(strict_json(out), indent=1, ensure_ascii=False) + "\n")
    paths = plot(series, analysis, prefix)
    print(f"wrote {json_path} and {', '.join(p.name for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
