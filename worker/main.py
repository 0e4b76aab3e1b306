"""The worker: reap stale leases → claim the oldest queued job → run its probes → finish it.

`edgetune worker [--device cuda:0] [--once]` (or `python -m worker.main`), one per GPU, as many as
you like on one database.
A job's probes are stored as each finishes, so a job re-claimed after a crash resumes from them
and never re-runs a finished probe. Training never holds a database transaction open: progress,
heartbeat and cancel checks are one short commit at most about once a second, made from the probe
engine's measurement callback. SIGTERM/SIGINT stop at the next measurement and give the job back
to the queue (`release`); the worker then exits 0.

The lease must outlast the longest gap between two measurements (seconds on CPU for small nets);
a worker that stops reporting for lease_seconds is presumed dead and its job is requeued.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import torch
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app import queue, webhooks
from app.config import Settings
from app.datasets import DatasetPathError
from app.db import DatabaseNotMigrated, make_engine, prepare_database, session_factory
from app.logs import configure_logging
from app.models import Job
from app.schemas import RecommendationSpec
from worker import recommend
from worker.data import load_dataset
from worker.law import OrderKind, effective_rate, order_kind, probe_order
from worker.nets import SpecError
from worker.plan import PlannedProbe
from worker.probe import ProbeResult, device_name, pick_device

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
    stored_keys: set[str] = field(default_factory=set)
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

    def on_progress(self, progress: recommend.Progress) -> bool:
        """The engine's progress: written when due (at once at a milestone); False halts it."""
        if self.phase == "loading-data":
            # The ETA extrapolates this attempt's pace from here: stored probes came for free.
            self.started, self.start_fraction = time.monotonic(), progress.fraction
        self.phase, self.fraction = progress.phase, progress.fraction
        return self.report(force=progress.milestone)

    def planned(self, done: Mapping[str, ProbeResult], plan: list[PlannedProbe]) -> None:
        self.probes_total = len(plan)
        self.stored_keys = {p.key for p in plan if p.key in done}
        remaining = [p.key for p in plan if p.key not in done]
        self.log.info(
            "%d probes planned, %d already stored; running %s",
            len(plan),
            len(plan) - len(remaining),
            ", ".join(remaining) or "none",
        )

    def store(self, kind: OrderKind, probe: PlannedProbe, result: ProbeResult) -> None:
        """Store a finished probe at once, with the order-parameter series the fits read."""
        if probe.key in self.stored_keys or result.outcome == "cancelled":
            return
        data = result.to_dict()
        config = result.config
        rate = effective_rate(config.learning_rate, config.momentum, config.batch_size)
        data["order"] = probe_order(kind, result.records, rate).model_dump(mode="json")
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
        with self.sessions() as session:
            stored = queue.stored_probes(session, self.job.id)
        done = {key: ProbeResult.from_dict(row["result"]) for key, row in stored.items()}
        recommendation = recommend.run(
            spec,
            dataset,
            device=self.device,
            done=done,
            attempts=self.job.attempts,
            on_plan=partial(self.planned, done),
            on_probe=partial(self.store, order_kind(spec)),
            on_progress=self.on_progress,
        )
        if recommendation is None or self.halt is not None:
            return self.finish_halted()
        result = recommendation.model_dump(mode="json")
        with self.sessions() as session:
            finished = queue.complete(session, self.job.id, worker_id=self.worker_id, result=result)
        self.log.info(
            "succeeded" if finished else "finished, but the lease was lost: result dropped"
        )

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


def start(settings: Settings, *, device: str | None, once: bool) -> int:
    """`edgetune worker`: check the database, then run the worker loop until SIGTERM/SIGINT (or
    one job with `once`). Raises app.db.DatabaseNotMigrated, before anything else starts, when the
    database is not at the code's revision (the embedded default is migrated instead)."""
    engine = make_engine(settings)
    try:
        prepare_database(settings, engine)
    finally:
        engine.dispose()
    stop = threading.Event()
    install_signal_handlers(stop)
    return run_worker(settings, device=device, once=once, stop=stop)


def main(argv: list[str] | None = None) -> int:
    """`python -m worker.main [--device D] [--once]`: a worker on EDGETUNE_DATABASE_URL."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.main", description="Claim and run queued edgetune jobs."
    )
    parser.add_argument("--device", help="torch device, e.g. cuda:0 (default: cuda if present)")
    parser.add_argument("--once", action="store_true", help="run at most one job, then exit")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(os.environ.get("EDGETUNE_LOG_LEVEL", "INFO"), settings.log_format)
    try:
        return start(settings, device=args.device, once=args.once)
    except DatabaseNotMigrated as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
