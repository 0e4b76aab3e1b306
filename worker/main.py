"""The worker: reap stale leases → claim the oldest queued job → run its probes → finish it.

`edgetune worker [--device cuda:0] [--once]`, one per GPU, as many as you like on one database.
A job's probes are stored as each finishes, so a job re-claimed after a crash resumes from them
and never re-runs a finished probe. Training never holds a database transaction open: progress,
heartbeat and cancel checks are one short commit at most about once a second, made from the probe
engine's measurement callback. SIGTERM/SIGINT stop at the next measurement and give the job back
to the queue (`release`); the worker then exits 0.

The lease must outlast the longest gap between two measurements (seconds on CPU for small nets);
a worker that stops reporting for lease_seconds is presumed dead and its job is requeued.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app import queue, webhooks
from app.config import Settings
from app.datasets import DatasetPathError
from app.db import make_engine, prepare_database, session_factory
from app.models import Job
from app.schemas import RecommendationSpec
from worker import recommend
from worker.data import load_dataset
from worker.nets import SpecError
from worker.probe import ProbeProgress, ProbeResult, device_name, pick_device

logger = logging.getLogger("edgetune.worker")

Phase = Literal["loading-data", "probing", "fitting", "verifying"]
Halt = Literal["cancel", "lost", "stop"]
# Progress (and with it the heartbeat and the cancel check) is written at most this often: live
# enough for a progress bar and a prompt cancel, one tiny UPDATE per second per worker.
PROGRESS_WRITE_SECONDS = 1.0
# Errors that no retry can fix: the job fails at once with the message.
PERMANENT_ERRORS = (ValidationError, DatasetPathError, SpecError)


class JobLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every message with the job id, so interleaved workers' logs stay readable."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = self.extra or {}
        # job_id also as a record attribute, for the JSON log format (app/logs.py).
        kwargs["extra"] = {**dict(extra), **kwargs.get("extra", {})}
        return f"job {extra['job_id']}: {msg}", kwargs


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class JobRun:
    """One attempt at one job: its progress, its halt reason, its database writes."""

    settings: Settings
    sessions: sessionmaker[Session]
    job: Job
    worker_id: str
    device: torch.device
    stop: threading.Event
    log: JobLog
    phase: Phase = "loading-data"
    probes_total: int = 0
    steps_total: int = 0
    steps_stored: int = 0
    stored_keys: set[str] = field(default_factory=set)
    # Share of the job's compute spent on probes (the rest is verification, when asked for).
    probe_share: float = 0.98
    fraction: float = 0.0
    started: float = field(default_factory=time.monotonic)
    start_fraction: float = 0.0
    last_write: float = 0.0
    halt: Halt | None = None

    def progress(self) -> dict[str, Any]:
        done = self.fraction - self.start_fraction
        elapsed = time.monotonic() - self.started
        eta = elapsed * (1.0 - self.fraction) / done if done > 1e-6 else None
        return {
            "phase": self.phase,
            "probes_done": len(self.stored_keys),
            "probes_total": self.probes_total,
            "fraction": round(min(1.0, max(0.0, self.fraction)), 4),
            "eta_seconds": None if eta is None or not math.isfinite(eta) else round(eta, 1),
        }

    def report(self, *, force: bool = False) -> bool:
        """Write progress + heartbeat when due; False when the job must stop (and why in halt)."""
        if self.halt is not None:
            return False
        if self.stop.is_set():
            self.halt = "stop"
            return False
        now = time.monotonic()
        if not force and now - self.last_write < PROGRESS_WRITE_SECONDS:
            return True
        self.last_write = now
        with self.sessions() as session:
            state = queue.heartbeat(
                session,
                self.job.id,
                worker_id=self.worker_id,
                lease_seconds=self.settings.lease_seconds,
                progress=self.progress(),
            )
        if state != "ok":
            self.halt = state
            self.log.info("stopping at this measurement: %s", state)
            return False
        return True

    def set_phase(self, phase: Phase) -> bool:
        self.phase = phase
        return self.report(force=True)

    def store(self, probe: recommend.PlannedProbe, result: ProbeResult) -> None:
        if probe.key in self.stored_keys or result.outcome == "cancelled":
            return
        data = result.to_dict()
        with self.sessions() as session:
            fresh = queue.store_probe(
                session,
                self.job.id,
                key=probe.key,
                config=data["config"],
                outcome=result.outcome,
                result=data,
                seconds=result.seconds,
            )
        self.stored_keys.add(probe.key)
        self.steps_stored += probe.config.steps
        self.log.info(
            "probe %s %s (%s, %.1f s)",
            probe.key,
            "stored" if fresh else "was already stored by another worker",
            result.outcome,
            result.seconds,
        )

    def run(self) -> None:
        """Run the job to an end state or a halt; errors propagate to `finish_with_error`."""
        spec = RecommendationSpec.model_validate(self.job.spec)
        if not self.set_phase("loading-data"):
            return self.finish_halted()
        dataset = load_dataset(spec.dataset, self.settings.data_roots, spec.seed).to(self.device)
        plan = recommend.plan_probes(spec, dataset)
        self.probes_total = len(plan)
        self.steps_total = max(1, sum(p.config.steps for p in plan))
        if spec.verify:
            # Probe compute is probe_fraction of one full run; verification is one full run.
            self.probe_share = spec.budget.probe_fraction / (spec.budget.probe_fraction + 1.0)
        with self.sessions() as session:
            stored = queue.stored_probes(session, self.job.id)
        results: dict[str, ProbeResult] = {}
        for probe in plan:
            if probe.key in stored:
                results[probe.key] = ProbeResult.from_dict(stored[probe.key]["result"])
                self.stored_keys.add(probe.key)
                self.steps_stored += probe.config.steps
        remaining = [p for p in plan if p.key not in stored]
        self.log.info(
            "%d probes planned, %d already stored; running %s",
            len(plan),
            len(plan) - len(remaining),
            ", ".join(p.key for p in remaining) or "none",
        )
        self.fraction = self.probe_share * self.steps_stored / self.steps_total
        # The ETA extrapolates this attempt's pace from here: stored probes came for free.
        self.started, self.start_fraction = time.monotonic(), self.fraction
        if not self.set_phase("probing"):
            return self.finish_halted()
        for group_id in sorted({p.group for p in remaining}):
            group = [p for p in remaining if p.group == group_id]
            group_results = recommend.run_group(
                spec, dataset, group, device=self.device, on_progress=self.probe_callback(group)
            )
            for probe, result in zip(group, group_results, strict=True):
                self.store(probe, result)
                results[probe.key] = result
            if self.halt is not None or not self.report(force=True):
                return self.finish_halted()

        if not self.set_phase("fitting"):
            return self.finish_halted()
        cost = {
            "device": str(self.device),
            "probe_seconds": sum(r.seconds for r in results.values()),
            "probe_steps": sum(r.steps_done for r in results.values()),
            "attempts": self.job.attempts,
        }
        recommendation = recommend.recommend(
            spec,
            dataset,
            plan,
            results,
            device=self.device,
            on_progress=self.verify_callback(),
            cost=cost,
        )
        if self.halt is not None:
            return self.finish_halted()
        with self.sessions() as session:
            done = queue.complete(
                session, self.job.id, worker_id=self.worker_id, result=recommendation
            )
        self.log.info("succeeded" if done else "finished, but the lease was lost: result dropped")

    def probe_callback(self, group: list[recommend.PlannedProbe]) -> Any:
        def on_progress(p: ProbeProgress) -> bool:
            steps = 0
            for probe, frozen in zip(group, p.results_so_far, strict=True):
                if frozen is not None:
                    # A member stopped early is finished: store it now, not at the group's end.
                    self.store(probe, frozen)
                else:
                    steps += min(p.step, probe.config.steps)
            self.fraction = self.probe_share * (self.steps_stored + steps) / self.steps_total
            return self.report()

        return on_progress

    def verify_callback(self) -> Any:
        def on_progress(p: ProbeProgress) -> bool:
            if self.phase != "verifying":
                self.phase = "verifying"
            share = 1.0 - self.probe_share
            self.fraction = self.probe_share + share * p.step / max(1, p.steps_total)
            return self.report()

        return on_progress

    def finish_halted(self) -> None:
        with self.sessions() as session:
            if self.halt == "cancel":
                queue.mark_cancelled(session, self.job.id, worker_id=self.worker_id)
                self.log.info("cancelled (%d probes kept)", len(self.stored_keys))
            elif self.halt == "stop":
                queue.release(session, self.job.id, worker_id=self.worker_id)
                self.log.info("released back to the queue (%d probes kept)", len(self.stored_keys))
            else:
                self.log.warning("lease lost; another worker owns the job now")

    def finish_with_error(self, exc: Exception) -> None:
        permanent = isinstance(exc, PERMANENT_ERRORS)
        message = f"{type(exc).__name__}: {exc}"
        with self.sessions() as session:
            status = queue.fail_or_retry(
                session, self.job.id, worker_id=self.worker_id, error=message, retry=not permanent
            )
        self.log.error("%s → %s", message, status or "lease already lost")


def run_one(
    settings: Settings,
    sessions: sessionmaker[Session],
    job: Job,
    *,
    worker_id: str,
    device: torch.device,
    stop: threading.Event,
) -> None:
    log = JobLog(logger, {"job_id": job.id})
    log.info("claimed (attempt %d of %d) by %s", job.attempts, job.max_attempts, worker_id)
    run = JobRun(settings, sessions, job, worker_id, device, stop, log)
    try:
        run.run()
    except Exception as exc:
        log.exception("failed")
        try:
            run.finish_with_error(exc)
        except SQLAlchemyError:
            # The database is unreachable too: the lease runs out and the job is requeued.
            log.exception("could not record the failure")


def run_worker(
    settings: Settings,
    *,
    device: str | None = None,
    once: bool = False,
    stop: threading.Event | None = None,
    worker_id: str | None = None,
) -> int:
    """The worker loop until `stop` is set (or one job with once=True). Returns the exit code."""
    stop = stop or threading.Event()
    worker_id = worker_id or new_worker_id()
    torch_device = pick_device(device)
    engine = make_engine(settings)
    try:
        prepare_database(settings, engine)
        sessions = session_factory(engine)
        logger.info(
            "worker %s on %s (%s), polling %s",
            worker_id,
            torch_device,
            device_name(torch_device),
            engine.url.database,
        )
        while not stop.is_set():
            try:
                with sessions() as session:
                    requeued = queue.requeue_stale(session)
                    if requeued:
                        logger.info("requeued %d jobs with expired leases", requeued)
                    job = queue.claim(
                        session, worker_id=worker_id, lease_seconds=settings.lease_seconds
                    )
            except OperationalError as exc:
                # A database restart or a network blip: keep polling rather than die.
                logger.warning("database unavailable, retrying: %s", exc.orig)
                stop.wait(settings.poll_seconds)
                continue
            if job is not None:
                run_one(
                    settings, sessions, job, worker_id=worker_id, device=torch_device, stop=stop
                )
            # Between jobs: send the webhooks that are due (those of the job just ended, too).
            try:
                webhooks.deliver_due(sessions, settings)
            except Exception:
                # Webhooks never stop the worker; the deliveries stay pending for the next round.
                logger.exception("could not send webhooks this round")
            if once:
                break
            if job is None:
                stop.wait(settings.poll_seconds)
    finally:
        engine.dispose()
    logger.info("worker %s stopped", worker_id)
    return 0


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM/SIGINT: finish at the next measurement, give the job back, exit 0."""

    def handle(signum: int, frame: object) -> None:
        logger.info("%s received: stopping at the next measurement", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def main(argv: list[str] | None = None) -> int:
    """`python -m worker.main [--device D] [--once]` is `edgetune worker [--device D] [--once]`."""
    from app.cli import main as cli_main

    return cli_main(["worker", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
