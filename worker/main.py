"""The worker: reap stale leases → claim the oldest queued job → run its probes → finish it.

`edgetune worker [--device cuda:0] [--once]` (or `python -m worker.main`), one per GPU, as many as
you like on one database.
A job's probes are stored as each finishes, so a job re-claimed after a crash resumes from them
and never re-runs a finished probe. Training never holds a database transaction open.

The lease is renewed by a heartbeat thread per running job (`JobRun.beat_until_done`), not by
training: one measurement interval can outlast any sensible lease (F8: 76–98 s between two
measurements of a 3×128-channel CNN on Fashion-MNIST on a CPU, past the 60 s lease, so a healthy
worker's job was reaped and stolen). Each beat is one guarded UPDATE that renews the lease, writes
the progress the training side last set and reads the cancel flag, every min(1 s, lease/4): a
cancel is seen within a second and a lease gets four beats before it can run out. The training
side only reads what the beats found (`JobRun.report`, from the engine's measurement callback):
a cancel, a lost lease (another worker owns the job now) or SIGTERM/SIGINT halts it at its very
next measurement. A cancel ends the job cancelled, a stop gives it back to the queue (`release`;
the worker then exits 0), a lost lease leaves it to its new owner without writing anything more.

A worker that stops beating for lease_seconds is presumed dead and its job is requeued. Every
write rides out a database outage shorter than that (`JobRun.write`: retried with backoff, given
up only when the lease would have run out anyway). A job that raises fails at once with the
message unless the error is one another attempt can fix (`failure`: the database or the lease).
Webhooks are sent by a thread of their own (`deliver_webhooks`), so a slow receiver never delays
claiming or running a job (F10).
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
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, TypeVar

import torch
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from app import fleet, queue, webhooks
from app.config import Settings
from app.db import DatabaseNotMigrated, make_engine, prepare_database, session_factory
from app.logs import configure_logging
from app.models import Job
from app.schemas import (
    DATASET_PLUGINS,
    MODEL_PLUGINS,
    PluginModelSpec,
    Recommendation,
    RecommendationSpec,
)
from edgetune import nets, plugins
from worker import recommend
from worker.data import Dataset, load_dataset
from worker.law import OrderKind, effective_rate, order_kind, probe_order
from worker.plan import PlannedProbe
from worker.probe import ProbeResult, device_name, pick_device

logger = logging.getLogger("edgetune.worker")

Phase = Literal["loading-data", "probing", "fitting", "verifying"]
Halt = Literal["cancel", "lost", "stop"]
# The heartbeat (lease, progress, cancel check) is written this often, or every lease/4 when
# that is shorter: live enough for a progress bar and a prompt cancel, one tiny UPDATE per second
# per running job.
HEARTBEAT_SECONDS = 1.0
# A write that finds the database unreachable is retried after 0.1 s, 0.2 s, ... at most 2 s apart:
# a restart or failover of PostgreSQL takes seconds and drops every pooled connection.
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0
T = TypeVar("T")


class LeaseLost(Exception):
    """The database stayed out of reach until this worker's lease ran out: another worker may
    own the job now, so this one stops (another attempt, here or there, can succeed)."""


# The only errors another attempt can fix: the database went away (a restart, a failover, a
# network blip, a full pool) or the lease ran out under this worker. Everything else is raised by
# the engine on the job's own inputs (the spec, its data, the fits) and would be raised again on
# the next attempt: the job fails at once with the message, instead of burning max_attempts on the
# same crash (F7: an OverflowError in a fit was tried three times).
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)
TRANSIENT_ERRORS = (*DATABASE_UNAVAILABLE, LeaseLost)
# Out of host or device memory: as deterministic as the rest (same spec, same sizes), but the
# message says what to change. torch's CPU allocator raises a plain RuntimeError with this text.
OUT_OF_MEMORY = (MemoryError, torch.OutOfMemoryError)
CPU_ALLOCATOR_FAILED = "can't allocate memory"


def failure(exc: Exception, device: torch.device) -> tuple[str, bool]:
    """The job's error message for `exc`, and whether another attempt may succeed."""
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OUT_OF_MEMORY) or CPU_ALLOCATOR_FAILED in message:
        # torch's CUDA message runs to several lines of allocator advice; its first says it all.
        first_line = message.strip().splitlines()[0][:300]
        where = f"on {device}" if isinstance(exc, torch.OutOfMemoryError) else "in host RAM"
        return (
            f"out of memory {where} ({first_line}): the job's data and model do not fit in "
            "this worker's memory and would not on another attempt. Make the job smaller: a "
            "smaller fixed optimizer.batch_size, fewer or narrower layers (model), or less data "
            "(dataset.max_train_samples; synthetic_samples / synthetic_features)",
            False,
        )
    return message, isinstance(exc, TRANSIENT_ERRORS)


class JobLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every message with the job id, so interleaved workers' logs stay readable."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = self.extra or {}
        # job_id also as a record attribute, for the JSON log format (app/logs.py).
        kwargs["extra"] = {**dict(extra), **kwargs.get("extra", {})}
        return f"job {extra['job_id']}: {msg}", kwargs


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def heartbeat_seconds(lease_seconds: float) -> float:
    """Seconds between two beats: four beats per lease at least, one a second at most."""
    return min(HEARTBEAT_SECONDS, lease_seconds / 4)


@dataclass
class JobRun:
    """One attempt at one job: its progress, its halt reason, its database writes.

    Two threads share it: the training side (`run`, the engine's callbacks) sets the progress
    fields and reads `halt`; the heartbeat thread (`beat_until_done`) writes that progress and
    sets `halt`. Plain attribute reads and writes, atomic under the GIL; `_halt_lock` orders the
    two writers of `halt`.
    """

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
    halt: Halt | None = None
    # time.monotonic() when the lease was last set (claim or heartbeat), taken before the write:
    # the lease runs to at least leased_at + lease_seconds.
    leased_at: float = field(default_factory=time.monotonic)
    # Set to beat at once (a milestone), and when the heartbeats are to end (`done`).
    wake: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    _halt_lock: threading.Lock = field(default_factory=threading.Lock)

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
        """The training side's check, at every measurement: False when the job must stop (why
        in halt). Writes nothing itself; `force` (a milestone) has the next beat written now."""
        if self.halt is None and self.stop.is_set():
            self.halt_with("stop")
        if self.halt is not None:
            return False
        if force:
            self.wake.set()
        return True

    def halt_with(self, reason: Halt) -> None:
        """Record why the job must stop: the first reason wins, except that a lost lease
        overrides the others (the job is not ours to cancel or release any more)."""
        with self._halt_lock:
            if self.halt is None or (reason == "lost" and self.halt != "lost"):
                self.halt = reason
                self.log.info("stopping at the next measurement: %s", reason)

    def beat(self) -> bool:
        """One heartbeat: renew the lease, write the progress, read the cancel flag. False when
        the lease is lost, and with it any reason to beat again."""
        try:
            state = self.write(self._heartbeat, renews_lease=True)
        except LeaseLost as exc:
            self.log.warning("%s", exc)
            state = "lost"
        if state != "ok":
            self.halt_with(state)
        return state != "lost"

    def _heartbeat(self, session: Session) -> queue.HeartbeatResult:
        """The job's heartbeat, and the worker's own (its advert stays live while it trains)."""
        state = queue.heartbeat(
            session,
            self.job.id,
            worker_id=self.worker_id,
            lease_seconds=self.settings.lease_seconds,
            progress=self.progress(),
        )
        fleet.seen(session, self.worker_id)
        return state

    def beat_until_done(self) -> None:
        """The heartbeat thread: beat at once, then every heartbeat_seconds until `done`."""
        every = heartbeat_seconds(self.settings.lease_seconds)
        try:
            while not self.done.is_set() and self.beat():
                self.wake.wait(every)
                self.wake.clear()
        except Exception:
            # Nothing renews the lease any more: halt rather than train on for a job that
            # another worker will soon take over.
            self.log.exception("the heartbeat failed")
            self.halt_with("lost")

    @contextmanager
    def heartbeats(self) -> Iterator[None]:
        """The heartbeat thread for the block; stopped (after its beat in flight) when it ends."""
        thread = threading.Thread(
            target=self.beat_until_done, name=f"heartbeat-{self.job.id[:8]}", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            self.done.set()
            self.wake.set()
            thread.join()

    def write(self, statement: Callable[[Session], T], *, renews_lease: bool = False) -> T:
        """Run one short transaction, retried with backoff while the database is unreachable.

        Gives up (LeaseLost) only when the next try would come after the lease ran out, when
        another worker may reap the job anyway; a shorter outage costs this job nothing, not its
        attempt nor its stored probes. Every statement here is safe to repeat: a heartbeat and
        store_probe are idempotent, and a transition whose commit was lost with the connection
        finds its guard no longer matching and changes nothing.
        """
        delay = RETRY_FIRST_SECONDS
        while True:
            tried_at = time.monotonic()
            try:
                with self.sessions() as session:
                    result = statement(session)
            except DATABASE_UNAVAILABLE as exc:
                why = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or ["?"])[0]
                left = self.leased_at + self.settings.lease_seconds - time.monotonic()
                if left <= delay:
                    raise LeaseLost(
                        f"the database stayed unreachable until the lease ran out ({why})"
                    ) from exc
                self.log.warning(
                    "database unavailable (%s); retrying in %.1f s, %.0f s of lease left",
                    why,
                    delay,
                    left,
                )
                time.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_SECONDS)
                continue
            if renews_lease:
                self.leased_at = tried_at
            return result

    def set_phase(self, phase: Phase) -> bool:
        self.phase = phase
        return self.report(force=True)

    def on_progress(self, progress: recommend.Progress) -> bool:
        """The engine's progress, for the next beat (at once at a milestone); False halts it."""
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
        """Store a finished probe at once, with the order-parameter series the fits read; not
        once the lease is lost (the job's new owner stores its own)."""
        if probe.key in self.stored_keys or result.outcome == "cancelled" or self.halt == "lost":
            return
        data = result.to_dict()
        config = result.config
        rate = effective_rate(config.learning_rate, config.momentum, config.batch_size)
        data["order"] = probe_order(kind, result.records, rate).model_dump(mode="json")
        fresh = self.write(
            lambda session: queue.store_probe(
                session,
                self.job.id,
                key=probe.key,
                config=data["config"],
                outcome=result.outcome,
                result=data,
                seconds=result.seconds,
            )
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
        """Run the job to an end state or a halt, heartbeating throughout; errors propagate to
        `finish_with_error` (called once the heartbeats have ended)."""
        with self.heartbeats():
            recommendation = self.train()
        self.finish(recommendation)

    def train(self) -> Recommendation | None:
        """The recommendation, or None when halted."""
        spec = RecommendationSpec.model_validate(self.job.spec)
        if not self.set_phase("loading-data"):
            return None
        dataset = load_dataset(spec.dataset, self.settings.data_roots, spec.seed)
        check_plugin_limits(spec, dataset, self.settings)
        dataset = dataset.to(self.device)
        stored = self.write(lambda session: queue.stored_probes(session, self.job.id))
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
        return recommendation

    def finish(self, recommendation: Recommendation | None) -> None:
        """Store the recommendation (complete() is guarded: never after the lease was lost)."""
        if recommendation is None or self.halt is not None:
            return self.finish_halted()
        result = recommendation.model_dump(mode="json")
        finished = self.write(
            lambda session: queue.complete(
                session,
                self.job.id,
                worker_id=self.worker_id,
                result=result,
                # The heartbeats have ended: the last one may predate the last probe stored.
                progress=self.progress(),
            )
        )
        self.log.info(
            "succeeded" if finished else "finished, but the lease was lost: result dropped"
        )

    def finish_halted(self) -> None:
        job_id, worker_id = self.job.id, self.worker_id
        if self.halt == "cancel":
            self.write(lambda session: queue.mark_cancelled(session, job_id, worker_id=worker_id))
            self.log.info("cancelled (%d probes kept)", len(self.stored_keys))
        elif self.halt == "stop":
            self.write(lambda session: queue.release(session, job_id, worker_id=worker_id))
            self.log.info("released back to the queue (%d probes kept)", len(self.stored_keys))
        else:
            self.log.warning("lease lost; another worker owns the job now")

    def finish_with_error(self, exc: Exception) -> None:
        """Requeue the job after a transient error; fail it at once after any other (`failure`)."""
        message, retry = failure(exc, self.device)
        status = self.write(
            lambda session: queue.fail_or_retry(
                session, self.job.id, worker_id=self.worker_id, error=message, retry=retry
            )
        )
        self.log.error("%s → %s", message, status or "lease already lost")


class PluginLimitExceeded(ValueError):
    """A plugin's model or data is over a limit of this deployment that the API could not check
    (it never imports plugins): the job fails with the field and the limit."""


def check_plugin_limits(spec: RecommendationSpec, dataset: Dataset, settings: Settings) -> None:
    """The limits app/limits.py applies before queueing, for what only a worker can measure: a
    plugin model's parameters (built once on the CPU) and a plugin dataset's training examples."""
    if spec.dataset.plugin is not None and dataset.train_size > settings.max_train_samples:
        raise PluginLimitExceeded(
            f"dataset.max_train_samples: plugin {spec.dataset.plugin!r} gives "
            f"{dataset.train_size} training examples, over this server's limit "
            f"{settings.max_train_samples}; set dataset.max_train_samples"
        )
    if isinstance(spec.model, PluginModelSpec):
        # Seeded on a fork of the RNG: the caller's random stream is left as it was.
        model = nets.seeded_model(spec.model, dataset.input_shape, dataset.num_classes, 0)
        count = nets.count_parameters(model)
        if count > settings.max_parameters:
            raise PluginLimitExceeded(
                f"model: plugin {spec.model.name!r} has {count:,} parameters on this dataset, "
                f"over this server's limit {settings.max_parameters:,}"
            )


def run_one(
    settings: Settings,
    sessions: sessionmaker[Session],
    job: Job,
    *,
    worker_id: str,
    device: torch.device,
    stop: threading.Event,
    claimed_at: float,
) -> None:
    """Run one claimed job to its end; `claimed_at`: time.monotonic() before the claim."""
    log = JobLog(logger, {"job_id": job.id})
    log.info("claimed (attempt %d of %d) by %s", job.attempts, job.max_attempts, worker_id)
    run = JobRun(settings, sessions, job, worker_id, device, stop, log, leased_at=claimed_at)
    try:
        run.run()
    except Exception as exc:
        log.exception("failed")
        try:
            run.finish_with_error(exc)
        except (SQLAlchemyError, LeaseLost):
            # The database stayed unreachable: the lease runs out and the job is requeued.
            log.exception("could not record the failure")


def deliver_webhooks(
    sessions: sessionmaker[Session], settings: Settings, stop: threading.Event
) -> None:
    """The webhook thread: send the due deliveries every poll_seconds until `stop`.

    Its own thread (F10): a receiver that answers slowly (one byte every 2 s) holds this thread
    for up to its delivery deadline (app.webhooks), never the claim loop. Errors are logged and
    the deliveries stay pending for the next pass; nothing here stops the worker.
    """
    while not stop.is_set():
        try:
            webhooks.deliver_due(sessions, settings)
        except Exception:
            logger.exception("could not send webhooks this round")
        stop.wait(settings.poll_seconds)


@contextmanager
def webhook_thread(sessions: sessionmaker[Session], settings: Settings) -> Iterator[None]:
    """`deliver_webhooks` in a thread for the block. When it ends, the delivery in flight gets
    webhook_timeout_seconds to finish; one still running then is left behind (a daemon thread)
    and sent again once its claim lapses (deliveries are at least once)."""
    stop = threading.Event()
    thread = threading.Thread(
        target=deliver_webhooks, args=(sessions, settings, stop), name="webhooks", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=settings.webhook_timeout_seconds)
        if thread.is_alive():
            logger.warning("stopping with a webhook delivery still in flight; it will be retried")


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
        advert = worker_advert(torch_device)
        with sessions() as session:
            forgotten = fleet.forget_stale(session)
        if forgotten:
            logger.info("forgot %d workers not seen for %s", forgotten, fleet.FORGET_AFTER)
        logger.info("plugins: models %s, datasets %s", advert.models, advert.datasets)
        with webhook_thread(sessions, settings):
            try:
                claim_loop(
                    settings, sessions, worker_id, torch_device, stop, once=once, advert=advert
                )
            finally:
                try:
                    with sessions() as session:
                        fleet.retire(session, worker_id)
                except SQLAlchemyError:
                    # Unrecorded, the advert still lapses once a lease passes unseen.
                    logger.warning("could not record that worker %s stopped", worker_id)
        if once:
            # `--once` ends when its job is done, webhook included: a last pass, in this thread.
            try:
                webhooks.deliver_due(sessions, settings)
            except Exception:
                logger.exception("could not send webhooks")
    finally:
        engine.dispose()
    logger.info("worker %s stopped", worker_id)
    return 0


def worker_advert(device: torch.device) -> fleet.Advert:
    """What this worker can run: the plugins installed here (read once, at start), its device."""
    return fleet.Advert(
        models=plugins.installed(MODEL_PLUGINS),
        datasets=plugins.installed(DATASET_PLUGINS),
        device=f"{device} ({device_name(device)})",
    )


def claim_loop(
    settings: Settings,
    sessions: sessionmaker[Session],
    worker_id: str,
    device: torch.device,
    stop: threading.Event,
    *,
    once: bool,
    advert: fleet.Advert,
) -> None:
    """Advertise, reap, claim (only jobs whose plugins are here), run, until `stop` (or after one
    poll with `once`)."""
    while not stop.is_set():
        claimed_at = time.monotonic()
        try:
            with sessions() as session:
                requeued = queue.requeue_stale(session)
                if requeued:
                    logger.info("requeued %d jobs with expired leases", requeued)
                fleet.advertise(session, worker_id, advert)
                job = queue.claim(
                    session,
                    worker_id=worker_id,
                    lease_seconds=settings.lease_seconds,
                    models=advert.models,
                    datasets=advert.datasets,
                )
        except OperationalError as exc:
            # A database restart or a network blip: keep polling rather than die.
            logger.warning("database unavailable, retrying: %s", exc.orig)
            stop.wait(settings.poll_seconds)
            continue
        if job is not None:
            run_one(
                settings,
                sessions,
                job,
                worker_id=worker_id,
                device=device,
                stop=stop,
                claimed_at=claimed_at,
            )
        if once:
            break
        if job is None:
            stop.wait(settings.poll_seconds)


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
