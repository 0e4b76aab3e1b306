"""Every change of a job's state, used by the API and the worker.

Each transition is a named function guarded by `WHERE status = <expected>` (and, for a worker's
transitions, `lease_owner = <worker>`), runs in one short transaction (`transaction`) and commits
before it returns; a guard that does not match changes nothing and says so in the return value.
Besides the transitions, only the reads a worker needs of its own job are here (get_job,
stored_probes, get_recommendation); every other read of jobs is in app.service.

Claiming: PostgreSQL locks the oldest queued row with `FOR UPDATE SKIP LOCKED`, so concurrent
workers each take a different job without waiting on each other. SQLite has one writer at a time;
there the claim is a guarded `UPDATE ... WHERE id = ? AND status = 'queued'` that only one worker
can win, retried on the next candidate when another worker won the race.

Time is the caller's clock (`utcnow()`): leases are tens of seconds, far above the clock skew of
machines kept in sync by NTP.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import webhooks
from app.models import Job, Probe, Recommendation, utcnow
from app.schemas import JobStatus

HeartbeatResult = Literal["ok", "cancel", "lost"]
# How many candidates a SQLite claim tries before giving up for this poll (others won the race).
SQLITE_CLAIM_TRIES = 5


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different spec."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"Idempotency-Key already used for job {job_id} with a different spec")
        self.job_id = job_id


@contextmanager
def transaction(session: Session) -> Iterator[None]:
    """Commit what the block did when it ends, roll it back when it raises.

    Not `Session.begin()`, which refuses a session already in a transaction: the API checks the
    caller's key in the request's session first and leaves that transaction open, for the
    request's own statements to share (app.auth.tenant_for_key); this ends it.
    """
    try:
        yield
        session.commit()
    except BaseException:
        session.rollback()
        raise


def spec_hash(spec: dict[str, Any]) -> str:
    """sha256 of the spec's canonical JSON (sorted keys, no whitespace)."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


def _ended(session: Session, job_id: str) -> None:
    """Queue the webhook of a job this transaction just ended, in the same transaction: an ended
    job always has its delivery (app.webhooks), whatever crashes afterwards."""
    row = session.execute(
        select(Job.status, Job.tenant, Job.spec, Job.error, Job.finished_at).where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        return
    status, tenant, spec, error, finished_at = row
    webhooks.enqueue(
        session,
        job_id,
        status=status,
        tenant=tenant,
        callback_url=(spec or {}).get("callback_url"),
        error=error,
        finished_at=finished_at,
    )


def get_job(session: Session, job_id: str, tenant: str | None = None) -> Job | None:
    """A fresh read of one job (another tenant's job reads as absent)."""
    query = select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    # Its own transaction, ended before returning: callers hold no snapshot open.
    with transaction(session):
        return session.scalars(query).one_or_none()


def create_job(
    session: Session,
    *,
    spec: dict[str, Any],
    tenant: str = "default",
    idempotency_key: str | None = None,
    max_attempts: int = 3,
    progress: dict[str, Any] | None = None,
) -> tuple[Job, bool]:
    """Queue a job; returns (job, created). A repeated Idempotency-Key with the same spec returns
    the first job and created=False; with another spec it raises IdempotencyConflict. The
    plugins the spec names are kept in columns of their own, for `claim` to match."""
    digest = spec_hash(spec)

    def existing() -> Job | None:
        if idempotency_key is None:
            return None
        job = session.scalars(
            select(Job).where(Job.tenant == tenant, Job.idempotency_key == idempotency_key)
        ).one_or_none()
        if job is not None and job.spec_hash != digest:
            raise IdempotencyConflict(job.id)
        return job

    try:
        with transaction(session):
            found = existing()
            if found is not None:
                return found, False
            now = utcnow()
            job = Job(
                tenant=tenant,
                status=JobStatus.QUEUED,
                spec=spec,
                spec_hash=digest,
                idempotency_key=idempotency_key,
                attempts=0,
                max_attempts=max_attempts,
                cancel_requested=False,
                progress=progress or {},
                created_at=now,
                updated_at=now,
                model_plugin=_plugin(spec, "model", "type", "name"),
                dataset_plugin=_plugin(spec, "dataset", "name", "plugin"),
            )
            session.add(job)
    except IntegrityError:
        # Two requests with one key raced; the unique (tenant, idempotency_key) picked a winner.
        with transaction(session):
            found = existing()
        if found is None:
            raise
        return found, False
    return job, True


def _plugin(spec: dict[str, Any], part: str, tag: str, key: str) -> str | None:
    """The entry-point name of the spec's model or dataset plugin, if it names one."""
    value = spec.get(part) or {}
    return str(value[key]) if value.get(tag) == "plugin" else None


def request_cancel(session: Session, job_id: str, tenant: str | None = None) -> Job | None:
    """queued → cancelled at once; running → cancel_requested (the worker stops at its next
    measurement interval). Finished jobs are left as they are. None when there is no such job."""
    now = utcnow()
    scope = [Job.id == job_id] if tenant is None else [Job.id == job_id, Job.tenant == tenant]
    with transaction(session):
        cancelled = session.execute(
            update(Job)
            .where(*scope, Job.status == JobStatus.QUEUED)
            .values(
                status=JobStatus.CANCELLED, finished_at=now, updated_at=now, cancel_requested=True
            )
        )
        if _rowcount(cancelled) == 1:
            _ended(session, job_id)
        session.execute(
            update(Job)
            .where(*scope, Job.status == JobStatus.RUNNING)
            .values(cancel_requested=True, updated_at=now)
        )
    return get_job(session, job_id, tenant)


def claim(
    session: Session,
    *,
    worker_id: str,
    lease_seconds: float,
    models: Collection[str] = (),
    datasets: Collection[str] = (),
) -> Job | None:
    """Take the oldest queued job that needs no plugin but `models` and `datasets` (the worker's):
    running, attempts + 1, leased to `worker_id`."""
    oldest_queued = (
        select(Job.id)
        .where(
            Job.status == JobStatus.QUEUED,
            or_(Job.model_plugin.is_(None), Job.model_plugin.in_(list(models))),
            or_(Job.dataset_plugin.is_(None), Job.dataset_plugin.in_(list(datasets))),
        )
        .order_by(Job.created_at, Job.id)
        .limit(1)
    )
    if _is_postgres(session):
        # The row lock lasts only for this short transaction; SKIP LOCKED lets another worker
        # take the next job instead of waiting for this one.
        with transaction(session):
            job_id = session.scalars(oldest_queued.with_for_update(skip_locked=True)).first()
            claimed = job_id is not None and _start(session, job_id, worker_id, lease_seconds)
        return get_job(session, job_id) if claimed and job_id else None
    for _ in range(SQLITE_CLAIM_TRIES):
        with transaction(session):
            job_id = session.scalars(oldest_queued).first()
            claimed = job_id is not None and _start(session, job_id, worker_id, lease_seconds)
        if job_id is None:
            return None
        if claimed:
            return get_job(session, job_id)
    return None


def _start(session: Session, job_id: str, worker_id: str, lease_seconds: float) -> bool:
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            attempts=Job.attempts + 1,
            lease_owner=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            updated_at=now,
        )
    )
    if _rowcount(result) != 1:
        return False
    # started_at records the first start; a re-claimed job keeps it.
    session.execute(
        update(Job).where(Job.id == job_id, Job.started_at.is_(None)).values(started_at=now)
    )
    return True


def _owned(job_id: str, worker_id: str) -> list[Any]:
    return [Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_owner == worker_id]


def heartbeat(
    session: Session,
    job_id: str,
    *,
    worker_id: str,
    lease_seconds: float,
    progress: dict[str, Any] | None = None,
) -> HeartbeatResult:
    """Extend the lease (and record progress): "ok", "cancel" (asked to stop), or "lost" (the
    lease expired and the job was requeued or taken by another worker: stop, write nothing).

    One guarded UPDATE ... RETURNING cancel_requested: every running job's heartbeat thread
    sends it about once a second (worker.main), so it is one round trip and one tiny write.
    """
    now = utcnow()
    values: dict[str, Any] = {
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "heartbeat_at": now,
        "updated_at": now,
    }
    if progress is not None:
        values["progress"] = progress
    statement = (
        update(Job)
        .where(*_owned(job_id, worker_id))
        .values(**values)
        .returning(Job.cancel_requested)
    )
    with transaction(session):
        cancel = session.execute(statement).scalar_one_or_none()
    if cancel is None:
        return "lost"
    return "cancel" if cancel else "ok"


def store_probe(
    session: Session,
    job_id: str,
    *,
    key: str,
    config: dict[str, Any],
    outcome: str,
    result: dict[str, Any],
    seconds: float,
) -> bool:
    """Store one finished probe; True if stored, False if (job_id, key) was already there.

    Idempotent: a worker that lost its lease may still finish a probe another worker also ran;
    the unique (job_id, key) keeps exactly one.
    """
    insert = pg_insert if _is_postgres(session) else sqlite_insert
    statement = (
        insert(Probe)
        .values(
            job_id=job_id,
            key=key,
            config=config,
            outcome=outcome,
            result=result,
            seconds=seconds,
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["job_id", "key"])
        .returning(Probe.id)
    )
    with transaction(session):
        return session.execute(statement).scalar_one_or_none() is not None


def stored_probes(session: Session, job_id: str) -> dict[str, dict[str, Any]]:
    """The job's finished probes by key: {id, key, config, outcome, result, seconds, created_at}."""
    with transaction(session):
        rows = session.scalars(select(Probe).where(Probe.job_id == job_id).order_by(Probe.id)).all()
    return {
        p.key: {
            "id": p.id,
            "key": p.key,
            "config": p.config,
            "outcome": p.outcome,
            "result": p.result,
            "seconds": p.seconds,
            "created_at": p.created_at,
        }
        for p in rows
    }


def get_recommendation(session: Session, job_id: str) -> dict[str, Any] | None:
    with transaction(session):
        row = session.get(Recommendation, job_id)
    return None if row is None else row.result


def complete(
    session: Session,
    job_id: str,
    *,
    worker_id: str,
    result: dict[str, Any],
    progress: dict[str, Any] | None = None,
) -> bool:
    """running → succeeded with its recommendation, in one commit. False if the lease was lost.
    `progress`: the worker's final count (probes done), else the last heartbeat's."""
    now = utcnow()
    with transaction(session):
        job = session.scalars(select(Job).where(*_owned(job_id, worker_id))).one_or_none()
        if job is None:
            return False
        last = progress if progress is not None else (job.progress or {})
        progress = {**last, "phase": "done", "fraction": 1.0, "eta_seconds": 0.0}
        updated = session.execute(
            update(Job)
            .where(*_owned(job_id, worker_id))
            .values(
                status=JobStatus.SUCCEEDED,
                finished_at=now,
                updated_at=now,
                lease_owner=None,
                lease_expires_at=None,
                progress=progress,
                error=None,
            )
        )
        if _rowcount(updated) != 1:
            # Lost between the read and the update: the guard wrote nothing, nor does this.
            return False
        session.add(Recommendation(job_id=job_id, result=result, created_at=now))
        _ended(session, job_id)
    return True


def fail_or_retry(
    session: Session, job_id: str, *, worker_id: str, error: str, retry: bool = True
) -> str | None:
    """running → queued (another attempt) or failed once attempts reach max_attempts, or at once
    when retry=False (a spec that can never run). Returns the new status, None if not owned."""
    now = utcnow()
    with transaction(session):
        job = session.scalars(select(Job).where(*_owned(job_id, worker_id))).one_or_none()
        if job is None:
            return None
        status = JobStatus.QUEUED if retry and job.attempts < job.max_attempts else JobStatus.FAILED
        updated = session.execute(
            update(Job)
            .where(*_owned(job_id, worker_id))
            .values(
                status=status,
                error=error,
                updated_at=now,
                lease_owner=None,
                lease_expires_at=None,
                finished_at=now if status == JobStatus.FAILED else None,
            )
        )
        owned = _rowcount(updated) == 1
        if status == JobStatus.FAILED and owned:
            _ended(session, job_id)
    return status if owned else None


def mark_cancelled(session: Session, job_id: str, *, worker_id: str) -> bool:
    """running → cancelled (the worker saw cancel_requested and stopped)."""
    now = utcnow()
    with transaction(session):
        updated = session.execute(
            update(Job)
            .where(*_owned(job_id, worker_id))
            .values(
                status=JobStatus.CANCELLED,
                finished_at=now,
                updated_at=now,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        if _rowcount(updated) == 1:
            _ended(session, job_id)
    return _rowcount(updated) == 1


def release(session: Session, job_id: str, *, worker_id: str) -> bool:
    """Graceful stop (SIGTERM): running → queued for another worker, keeping its stored probes.

    The attempt is given back: a worker shut down on purpose is not a failure of the job. A job
    that was asked to cancel meanwhile is cancelled instead.
    """
    now = utcnow()
    cleared: dict[str, Any] = {"updated_at": now, "lease_owner": None, "lease_expires_at": None}
    with transaction(session):
        cancelled = session.execute(
            update(Job)
            .where(*_owned(job_id, worker_id), Job.cancel_requested.is_(True))
            .values(status=JobStatus.CANCELLED, finished_at=now, **cleared)
        )
        if _rowcount(cancelled) == 1:
            _ended(session, job_id)
        requeued = session.execute(
            update(Job)
            .where(*_owned(job_id, worker_id))
            .values(status=JobStatus.QUEUED, attempts=Job.attempts - 1, **cleared)
        )
    return _rowcount(cancelled) + _rowcount(requeued) == 1


def requeue_stale(session: Session, *, now: datetime | None = None) -> int:
    """Running jobs whose lease expired (their worker died): back to queued, or failed with the
    reason once attempts reached max_attempts, or cancelled if that was asked. Returns how many.

    Every worker calls this before it claims, so a dead worker's job needs no supervisor.
    """
    now = now or utcnow()
    query = select(Job).where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
    if _is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    changed = 0
    with transaction(session):
        for job in session.scalars(query).all():
            cleared: dict[str, Any] = {
                "updated_at": now,
                "lease_owner": None,
                "lease_expires_at": None,
            }
            reason = (
                f"worker {job.lease_owner} stopped heartbeating; its lease expired at "
                f"{job.lease_expires_at.isoformat() if job.lease_expires_at else '?'}"
            )
            if job.cancel_requested:
                values = {"status": JobStatus.CANCELLED, "finished_at": now, **cleared}
            elif job.attempts >= job.max_attempts:
                reason = f"gave up after {job.attempts} attempts: {reason}"
                values = {
                    "status": JobStatus.FAILED,
                    "finished_at": now,
                    "error": reason,
                    **cleared,
                }
            else:
                values = {
                    "status": JobStatus.QUEUED,
                    "error": f"attempt {job.attempts}: {reason}",
                    **cleared,
                }
            # Guarded on the lease we saw: a heartbeat that renewed it meanwhile wins.
            result = session.execute(
                update(Job)
                .where(
                    Job.id == job.id,
                    Job.status == JobStatus.RUNNING,
                    Job.lease_owner == job.lease_owner,
                    Job.lease_expires_at < now,
                )
                .values(**values)
            )
            changed += _rowcount(result)
            if _rowcount(result) == 1 and values["status"] != JobStatus.QUEUED:
                _ended(session, job.id)
    return changed
