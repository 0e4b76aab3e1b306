"""The engine's one entry point: plan → probes → fits → verification → the Recommendation.

`run` is the whole pipeline, the same for the worker (worker/main.py), the tests and the
benchmarks. The stages live in their own modules: worker/plan.py (which probes), worker/probe.py
(training them, population-batched), worker/decide.py (fits → recommendation), worker/verify.py
(the verification run), worker/law.py (the growth law they share). This module owns what joins
them: running the groups of probes still missing, the stop rule that ends a growth probe once its
slope is known, and the progress a caller sees. It reports through callbacks and never touches a
database: the worker stores each probe from `on_probe` and halts the run from `on_progress`.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import numpy as np
import torch

from app.schemas import Cost, Recommendation, RecommendationSpec, Verification
from edgetune.nets import first_probe_seed
from worker import fit
from worker.data import Dataset
from worker.decide import at_the_boundary_by_design, decide, initial_refusal, refusal
from worker.law import BASE_BATCH, EDGE, OrderKind, order_kind, order_series, step0_kind
from worker.plan import PlannedProbe, plan_probes
from worker.probe import (
    MEASURE_BATCH,
    ProbeConfig,
    ProbeProgress,
    ProbeRecord,
    ProbeResult,
    init_model,
    run_population,
)
from worker.verdict import verdict
from worker.verify import verify

Phase = Literal["probing", "fitting", "verifying"]
# Enough points per probe for the slope fit (~40), whatever the dataset size.
MEASUREMENTS_PER_PROBE = 40
# A measurement with χ (a forward pass on 128 examples, under vmap) costs about 3 training steps at
# B 32: measuring more often than every 4th step made short probes (a 3-epoch budget on 10k
# examples: 150 and 37 steps) cost 2× a full run in wall time for a fifth of its samples. Models
# steered by J² (weights only) take χ with the evaluations alone: 0.81 → 0.73 s on that case.
MIN_MEASURE_INTERVAL = 4
# Share of the job's compute spent on probes when there is no verification: the fits are the rest.
PROBE_SHARE = 0.98
# Examples χ is measured on where it steers the answer (our CNNs): a conv layer's χ averages over
# examples × positions, and the measurement is the CNN probes' largest overhead (a forward pass at
# every record: 0.37 of a run's wall time on the suite's small CNN at 128). On that CNN the χ of
# disjoint 128-example sets differed by 3.4 %, and 32-example prefixes of one by 1.4–2.6 %.
CONV_MEASURE_EXAMPLES = 64
NO_PROBES: Mapping[str, ProbeResult] = MappingProxyType({})


@dataclass(frozen=True)
class Progress:
    """Passed to `on_progress` after every measurement and at each milestone."""

    phase: Phase
    fraction: float  # of the job's compute: the probes, then the verification run
    # A phase began or a group of probes ended: worth reporting at once, not only when due.
    milestone: bool = False


def _stop_rule(
    probes: list[PlannedProbe], kind: OrderKind
) -> Callable[[int, list[ProbeRecord]], bool]:
    """Stop a growth probe once it reaches the edge, or once its slope after the transient is
    known to ±2 % (95 % CI) over a window at least as long as the transient."""

    def stop(member: int, records: list[ProbeRecord]) -> bool:
        if probes[member].purpose != "growth" or len(records) < 8:
            return False
        t, y = order_series(records, kind)
        if y[-1] >= 0.95 * EDGE > y[0]:  # it grew to the edge (one that starts there runs on)
            return True
        t_min = fit.transient_end(t, y)
        keep = t >= t_min
        if keep.sum() < 8 or t[-1] - t_min < max(t_min, 0.5 * probes[member].epochs):
            return False
        try:
            # The cheap interval: asked at every measurement, it only decides when to stop; the
            # answer's own fits bootstrap (fit.slope_bootstrap, ~5 ms a fit).
            growth = fit.fit_growth(t[keep], y[keep], uncertainty="lag1")
        except fit.FitError:
            return False
        return bool(growth.A.value > 0 and growth.A.relative_half_width < 0.02)

    return stop


def measure_interval(steps: list[int]) -> int:
    """Steps between measurements for a group of probes running these many steps each."""
    return max(MIN_MEASURE_INTERVAL, math.isqrt(min(steps) * max(steps)) // MEASUREMENTS_PER_PROBE)


def _run_group(
    spec: RecommendationSpec,
    dataset: Dataset,
    probes: list[PlannedProbe],
    *,
    device: torch.device,
    on_progress: Callable[[ProbeProgress], bool],
) -> list[ProbeResult]:
    """Train one group of probes as a population; results in the order of `probes`."""
    configs = [p.config for p in probes]
    # Probes of one group reach the same τ in different numbers of steps (4× apart): the interval
    # is set by their geometric mean, so the shortest has half of MEASUREMENTS_PER_PROBE points
    # and the longest twice as many. A measurement (χ needs a forward pass on 128 examples) costs
    # several training steps, so measuring every probe 40 times at the shortest one's cadence
    # made the probes' wall time 3–4× their share of samples on small CNNs.
    measure_every = measure_interval([c.steps for c in configs])
    kind = order_kind(spec)
    return run_population(
        spec.model,
        dataset,
        configs,
        device=device,
        measure_every=measure_every,
        # Of the evaluations (validation loss, APJN) only the last is read (the no-law fallback
        # and the stored evidence): each probe is evaluated where it ends, whether it completed
        # or the stop rule ended it. Mid-probe ones cost 0.03–0.3 s each for nothing.
        evaluate_last_only=True,
        on_progress=on_progress,
        # A Kaiming-ReLU net is answered with its best probe at equal τ, which a stop (its χ
        # crossing 0.95, or a slope known to ±2 %) would cut unequally short.
        stop_when=None if at_the_boundary_by_design(spec) else _stop_rule(probes, kind),
        # Under J² (weights only), χ is evidence, not the answer: with the evaluations suffices.
        chi_every_record=kind == "chi",
        measure_examples=CONV_MEASURE_EXAMPLES if kind == "chi" else MEASURE_BATCH,
    )


@dataclass
class _Tally:
    """The finished probes, the progress fraction and whether a callback halted the run."""

    plan: list[PlannedProbe]
    probe_share: float
    on_probe: Callable[[PlannedProbe, ProbeResult], None] | None
    on_progress: Callable[[Progress], bool] | None
    finished: dict[str, ProbeResult] = field(default_factory=dict)
    steps_done: int = 0  # planned steps of the finished probes
    fraction: float = 0.0
    halted: bool = False

    @property
    def steps_total(self) -> int:
        return max(1, sum(p.config.steps for p in self.plan))

    def finish(self, probe: PlannedProbe, result: ProbeResult, *, stored: bool = False) -> None:
        """Count a finished probe once, and hand it to on_probe unless it came from `done`."""
        if probe.key in self.finished or result.outcome == "cancelled":
            return
        self.finished[probe.key] = result
        self.steps_done += probe.config.steps
        if not stored and self.on_probe is not None:
            self.on_probe(probe, result)

    def report(self, phase: Phase, fraction: float, *, milestone: bool = False) -> bool:
        """Pass the progress on; False (for good) once on_progress has said stop."""
        self.fraction = fraction
        if not self.halted and self.on_progress is not None:
            self.halted = not self.on_progress(Progress(phase, fraction, milestone))
        return not self.halted

    def probing(self, *, milestone: bool = False) -> bool:
        return self.report(
            "probing", self.probe_share * self.steps_done / self.steps_total, milestone=milestone
        )

    def population_callback(self, group: list[PlannedProbe]) -> Callable[[ProbeProgress], bool]:
        def on_population(p: ProbeProgress) -> bool:
            live_steps = 0
            for probe, frozen in zip(group, p.results_so_far, strict=True):
                if frozen is not None:
                    # A member stopped early is finished: hand it on now, not at the group's end.
                    self.finish(probe, frozen)
                else:
                    live_steps += min(p.step, probe.config.steps)
            done = self.steps_done + live_steps
            return self.report("probing", self.probe_share * done / self.steps_total)

        return on_population

    def verify_callback(self) -> Callable[[ProbeProgress], bool]:
        def on_verify(p: ProbeProgress) -> bool:
            share = 1.0 - self.probe_share
            return self.report(
                "verifying", self.probe_share + share * p.step / max(1, p.steps_total)
            )

        return on_verify

    def cost(self, device: torch.device, attempts: int, full_run_samples: float) -> Cost:
        results = [self.finished[p.key] for p in self.plan if p.key in self.finished]
        samples = sum(r.steps_done * r.config.batch_size for r in results)
        return Cost(
            device=str(device),
            probe_seconds=sum(r.seconds for r in results),
            probe_steps=sum(r.steps_done for r in results),
            attempts=attempts,
            full_run_equivalents=samples / full_run_samples,
        )


def run(
    spec: RecommendationSpec,
    dataset: Dataset,
    *,
    device: torch.device,
    done: Mapping[str, ProbeResult] = NO_PROBES,
    attempts: int = 1,
    on_plan: Callable[[list[PlannedProbe]], None] | None = None,
    on_probe: Callable[[PlannedProbe, ProbeResult], None] | None = None,
    on_progress: Callable[[Progress], bool] | None = None,
) -> Recommendation | None:
    """Plan the probes, run those missing from `done`, fit them, verify when spec.verify.

    `done` holds probes finished by an earlier attempt, by key: they are used as they are, never
    re-run. `on_plan(plan)` is called once, before any probe runs. `on_probe(planned, result)` is
    called once for each probe as it finishes (a member stopped early inside its population as
    soon as it stops). `on_progress(progress)` is called after every measurement and at each
    milestone; returning False halts the run at that point (the population's unfinished members
    end "cancelled" and are not handed to on_probe) and `run` returns None. `attempts` is
    recorded in the cost. The result carries the seed, the library versions and the device.
    """
    plan = plan_probes(spec, dataset)
    if not done:  # a resumed job was judged at step 0 by its first attempt
        refused = _refuse_at_step_0(spec, dataset, device=device)
        if refused is not None:
            reason, seconds = refused
            cost = Cost(
                device=str(device),
                probe_seconds=seconds,
                probe_steps=0,
                attempts=attempts,
                full_run_equivalents=0.0,
            )
            return _finished(refusal(spec, reason), _provenance(spec, device, cost, None))
    # Probe compute is probe_fraction of one full run; verification is one full run.
    pf = spec.budget.probe_fraction
    share = pf / (pf + 1.0) if spec.verify else PROBE_SHARE
    tally = _Tally(plan, share, on_probe, on_progress)
    for probe in plan:
        if probe.key in done:
            tally.finish(probe, done[probe.key], stored=True)
    if on_plan is not None:
        on_plan(plan)
    if not tally.probing(milestone=True):
        return None
    remaining = [p for p in plan if p.key not in tally.finished]
    for group_id in sorted({p.group for p in remaining}):
        group = [p for p in remaining if p.group == group_id]
        callback = tally.population_callback(group)
        results = _run_group(spec, dataset, group, device=device, on_progress=callback)
        for probe, result in zip(group, results, strict=True):
            tally.finish(probe, result)
        if tally.halted or not tally.probing(milestone=True):
            return None
    if not tally.report("fitting", tally.fraction, milestone=True):
        return None
    decision = decide(spec, plan, tally.finished, train_size=dataset.train_size)
    verification = None
    if spec.verify and decision.choice is not None and decision.y0 is not None:
        verification = verify(
            spec,
            dataset,
            decision.choice,
            decision.y0,
            device=device,
            on_progress=tally.verify_callback(),
        )
        if tally.halted:
            return None
    # One full run sees budget.epochs × the training set, whatever its batch size.
    full_run = spec.budget.epochs * dataset.train_size
    provenance = _provenance(spec, device, tally.cost(device, attempts, full_run), verification)
    return _finished(decision.recommendation, provenance)


def _finished(result: Recommendation, provenance: dict[str, object]) -> Recommendation:
    """The result with how it was made and the one-line verdict a person acts on."""
    result = result.model_copy(update=provenance)
    return result.model_copy(update={"verdict": verdict(result)})


def _provenance(
    spec: RecommendationSpec, device: torch.device, cost: Cost, verification: Verification | None
) -> dict[str, object]:
    return {
        "cost": cost,
        "seed": spec.seed,
        "versions": {
            "torch": str(torch.__version__),
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "device": str(device),
        "verification": verification,
    }


def _refuse_at_step_0(
    spec: RecommendationSpec, dataset: Dataset, *, device: torch.device
) -> tuple[str, float] | None:
    """(reason, seconds) when the untrained network already decides the answer: one measurement
    at step 0 (a forward pass on one batch), no training step."""
    started = time.perf_counter()
    seed = first_probe_seed(spec.seed)  # the same initial weights the probes start from
    normalised = any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        for m in init_model(spec.model, dataset, seed).modules()
    )
    y0 = math.nan
    if not normalised:
        batch = min(BASE_BATCH, dataset.train_size)
        config = ProbeConfig(0.0, 0.0, 0.0, batch, seed, 0)
        (initial,) = run_population(
            spec.model, dataset, [config], device=device, measure_every=0, eval_every=0
        )
        _, y = order_series(initial.records[:1], step0_kind(spec))
        y0 = float(y[0]) if len(y) else math.nan
    reason = initial_refusal(spec, y0, normalised=normalised)
    return None if reason is None else (reason, time.perf_counter() - started)
