"""What the HTTP API does, one keyword-only function per endpoint; routes only parse and return.

All job SQL lives here and in app.queue: the queue changes a job's state (and reads what a worker
needs of its own job); every other read of jobs, their probes and recommendations is here,
including what the plots (`plot_data`) and GET /metrics (`job_stats`) show. Functions raise
ProblemError for anything the client can act on.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Float, and_, case, cast, func, or_, select, text
from sqlalchemy.orm import Session

from app import queue, webhooks
from app.config import Settings
from app.errors import ProblemError, database_unavailable
from app.limits import check_spec
from app.models import JOB_ID_PATTERN, Job, Probe
from app.plots import PlotData
from app.queue import transaction
from app.schemas import (
    TERMINAL_STATUSES,
    JobLinks,
    JobOut,
    JobPage,
    JobStatus,
    ProbeList,
    ProbeOrder,
    ProbeOut,
    Progress,
    Recommendation,
    RecommendationSpec,
)

# Printable ASCII without spaces, as the idempotency-key draft's examples; bounded by the column.
MAX_IDEMPOTENCY_KEY = 255


def job_out(job: Job) -> JobOut:
    base = f"/v1/jobs/{job.id}"
    return JobOut(
        id=job.id,
        status=job.status,
        progress=Progress.model_validate(job.progress or {}),
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        cancel_requested=job.cancel_requested,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=job.error,
        spec=job.spec,
        links=JobLinks(
            self=base,
            recommendation=f"{base}/recommendation",
            probes=f"{base}/probes",
            cancel=f"{base}/cancel",
        ),
    )


def _not_found(job_id: str) -> ProblemError:
    return ProblemError(404, "Job not found", f"there is no job {job_id!r}", "job-not-found")


def _owned_job(session: Session, job_id: str, tenant: str) -> Job:
    """The tenant's job `job_id`, or the 404 problem. Every job id from a URL comes in here: one
    that cannot be a job id is not looked up (PostgreSQL refuses a NUL byte in a parameter)."""
    job = queue.get_job(session, job_id, tenant) if JOB_ID_PATTERN.fullmatch(job_id) else None
    if job is None:
        raise _not_found(job_id)
    return job


def _field_problem(status: int, field: str, message: str, kind: str) -> ProblemError:
    return ProblemError(
        status,
        "Invalid request" if status == 400 else "Unprocessable request",
        f"{field}: {message}",
        kind,
        errors=[{"field": field, "message": message, "type": kind}],
    )


def submit(
    session: Session,
    *,
    settings: Settings,
    spec: RecommendationSpec,
    tenant: str,
    idempotency_key: str | None,
) -> tuple[JobOut, bool]:
    """Check the spec against this server's limits and queue it; (job, created)."""
    webhooks.check_callback_url(spec.callback_url, settings)
    if idempotency_key is not None and not (
        0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
        and all(33 <= ord(c) <= 126 for c in idempotency_key)
    ):
        raise _field_problem(
            400,
            "Idempotency-Key",
            f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters without spaces",
            "invalid-header",
        )
    violations = check_spec(spec, settings)
    if violations:
        raise ProblemError(
            422,
            "Spec exceeds this server's limits or cannot run",
            "; ".join(f"{v.field}: {v.message}" for v in violations),
            "spec-rejected",
            errors=[{"field": v.field, "message": v.message, "type": v.type} for v in violations],
        )
    try:
        job, created = queue.create_job(
            session,
            spec=spec.model_dump(mode="json"),
            tenant=tenant,
            idempotency_key=idempotency_key,
            max_attempts=settings.max_attempts,
        )
    except queue.IdempotencyConflict as exc:
        raise ProblemError(
            409,
            "Idempotency-Key reused",
            f"this Idempotency-Key was used for job {exc.job_id} with a different spec; "
            "use a new key for a new request",
            "idempotency-key-reused",
        ) from exc
    return job_out(job), created


def get_job(session: Session, *, job_id: str, tenant: str) -> JobOut:
    return job_out(_owned_job(session, job_id, tenant))


def _encode_token(created_at: datetime, job_id: str, status: str | None) -> str:
    raw = json.dumps([created_at.isoformat(), job_id, status], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_token(token: str, status: str | None) -> tuple[datetime, str]:
    invalid = _field_problem(
        400, "page_token", "is not a token this server issued", "invalid-page-token"
    )
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, job_id, token_status = json.loads(raw)
        created_at = datetime.fromisoformat(created)
        if created_at.tzinfo is None:
            raise invalid
        # Normalised here, not in the column type: an offset can push year 1 or 9999 out of
        # range (0001-01-01T00:00:00+14:00), which is OverflowError, not ValueError.
        created_at = created_at.astimezone(UTC)
    except (binascii.Error, ValueError, TypeError, OverflowError) as exc:
        raise invalid from exc
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise invalid
    if token_status != status:
        raise _field_problem(
            400,
            "page_token",
            f"was issued for status={token_status}, not status={status}; "
            "keep the other parameters the same while paging",
            "invalid-page-token",
        )
    return created_at, job_id


def list_jobs(
    session: Session,
    *,
    tenant: str,
    status: JobStatus | None,
    page_size: int,
    page_token: str | None,
) -> JobPage:
    """Newest first, by keyset (created_at, id): pages stay consistent while jobs are added."""
    query = select(Job).where(Job.tenant == tenant)
    if status is not None:
        query = query.where(Job.status == status)
    if page_token:
        created_at, job_id = _decode_token(page_token, status)
        query = query.where(
            or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
        )
    with transaction(session):
        rows = session.scalars(
            query.order_by(Job.created_at.desc(), Job.id.desc()).limit(page_size + 1)
        ).all()
    jobs = [job_out(job) for job in rows[:page_size]]
    next_token = None
    if len(rows) > page_size:
        last = rows[page_size - 1]
        next_token = _encode_token(last.created_at, last.id, status)
    return JobPage(jobs=jobs, next_page_token=next_token)


def cancel_job(session: Session, *, job_id: str, tenant: str) -> JobOut:
    """queued → cancelled now; running → cancel requested (stops at its next interval)."""
    status = _owned_job(session, job_id, tenant).status
    if status in TERMINAL_STATUSES:
        raise _already_finished(job_id, status)
    job = queue.request_cancel(session, job_id, tenant)
    if job is None:
        raise _not_found(job_id)
    # The job may have finished between the read and the cancel; it keeps its outcome.
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise _already_finished(job_id, job.status)
    return job_out(job)


def _already_finished(job_id: str, status: str) -> ProblemError:
    return ProblemError(
        409,
        "Job already finished",
        f"job {job_id} is already {status}; only queued or running jobs can be cancelled",
        "job-finished",
    )


def get_recommendation(session: Session, *, job_id: str, tenant: str) -> Recommendation:
    job = _owned_job(session, job_id, tenant)
    if job.status != JobStatus.SUCCEEDED:
        detail = f"job {job_id} is {job.status}"
        if job.status not in TERMINAL_STATUSES:
            detail += f"; poll GET /v1/jobs/{job_id} until it has succeeded"
        elif job.error:
            detail += f": {job.error}"
        raise ProblemError(409, "No recommendation yet", detail, "recommendation-not-ready")
    result = queue.get_recommendation(session, job_id)
    if result is None:
        raise ProblemError(
            409,
            "No recommendation yet",
            f"job {job_id} has no stored result",
            "recommendation-lost",
        )
    return Recommendation.model_validate(result)


def get_probes(session: Session, *, job_id: str, tenant: str) -> ProbeList:
    _owned_job(session, job_id, tenant)
    with transaction(session):
        rows = session.scalars(
            select(Probe).where(Probe.job_id == job_id).order_by(Probe.created_at, Probe.id)
        ).all()
    probes = []
    for probe in rows:
        result = dict(probe.result or {})
        records = result.pop("records", [])
        order = result.pop("order", None)
        probes.append(
            ProbeOut(
                key=probe.key,
                config=probe.config,
                outcome=probe.outcome,
                seconds=probe.seconds,
                created_at=probe.created_at,
                records=records if isinstance(records, list) else [],
                summary=result,
                order=ProbeOrder.model_validate(order) if isinstance(order, dict) else None,
            )
        )
    return ProbeList(job_id=job_id, probes=probes)


def plot_data(session: Session, *, job_id: str, tenant: str) -> PlotData:
    """The job's spec, probes and recommendation, for app.plots (404 problem for another
    tenant's job)."""
    job = get_job(session, job_id=job_id, tenant=tenant)
    probes = get_probes(session, job_id=job_id, tenant=tenant).probes
    stored = (
        queue.get_recommendation(session, job_id) if job.status == JobStatus.SUCCEEDED else None
    )
    recommendation = None if stored is None else Recommendation.model_validate(stored)
    return PlotData(job.id, job.status, probes, recommendation)


@dataclass(frozen=True)
class JobStats:
    """Jobs and probes as GET /metrics reports them (app.metrics), over every tenant."""

    counts: dict[JobStatus, int]  # jobs by status; a status without jobs is absent
    # Finished jobs: seconds from first start to end, by final status (every terminal one).
    durations: dict[JobStatus, list[float]]
    probe_count: int
    probe_seconds: float  # summed over every stored probe
    probe_buckets: list[int]  # probes that took at most each of the buckets' bounds
    # Training samples per second (steps·batch_size/seconds) of the newest probes that say.
    throughput: list[float]
    newest_heartbeat: datetime | None  # of any running job


def job_stats(session: Session, *, buckets: Sequence[float], newest_probes: int) -> JobStats:
    """A few aggregate queries, plus one row per finished job for the durations (timestamp
    differences, which SQLite and PostgreSQL spell differently; reading two columns keeps the
    query portable)."""
    with transaction(session):
        counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        finished = session.execute(
            select(Job.status, Job.started_at, Job.finished_at).where(
                Job.status.in_(TERMINAL_STATUSES),
                Job.started_at.is_not(None),
                Job.finished_at.is_not(None),
            )
        ).all()
        # Bucket counts in SQL: one row, however many probes there are.
        bucket_columns = [
            func.coalesce(func.sum(case((Probe.seconds <= le, 1), else_=0)), 0) for le in buckets
        ]
        probes = session.execute(
            select(func.count(), func.coalesce(func.sum(Probe.seconds), 0.0), *bucket_columns)
        ).one()
        newest = session.execute(
            select(
                Probe.seconds,
                cast(Probe.config["batch_size"].as_float(), Float),
                cast(Probe.result["steps_done"].as_float(), Float),
            )
            .order_by(Probe.id.desc())
            .limit(newest_probes)
        ).all()
        newest_beat = session.execute(
            select(func.max(Job.heartbeat_at)).where(Job.status == JobStatus.RUNNING)
        ).scalar_one_or_none()
    durations: dict[JobStatus, list[float]] = {s: [] for s in JobStatus if s in TERMINAL_STATUSES}
    for status, started, ended in finished:
        if started is not None and ended is not None:  # filtered in SQL; typed as optional
            durations[status].append(max(0.0, (ended - started).total_seconds()))
    if newest_beat is not None and newest_beat.tzinfo is None:
        # func.max bypasses the column type on SQLite: the value comes back naive UTC.
        newest_beat = newest_beat.replace(tzinfo=UTC)
    return JobStats(
        counts=counts,
        durations=durations,
        probe_count=int(probes[0]),
        probe_seconds=float(probes[1]),
        probe_buckets=[int(n) for n in probes[2:]],
        throughput=[
            steps * batch / seconds
            for seconds, batch, steps in newest
            if seconds and seconds > 0 and batch is not None and steps is not None
        ],
        newest_heartbeat=newest_beat,
    )


def check_database(session: Session) -> None:
    """Raise a 503 problem unless the database answers a trivial query."""
    try:
        session.execute(text("SELECT 1"))
        session.commit()
    except Exception as exc:  # any driver error means "not ready"; the detail says which
        raise database_unavailable(exc) from exc
