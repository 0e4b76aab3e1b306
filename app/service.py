"""What the HTTP API does, one keyword-only function per endpoint; routes only parse and return.

Writes (create, cancel) go through app.queue, the one home of job state changes; the reads the
API alone needs (pages of jobs, a job's probes) are here. Functions raise ProblemError for
anything the client can act on.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, text
from sqlalchemy.orm import Session

from app import queue
from app.config import Settings
from app.errors import ProblemError
from app.limits import check_spec
from app.models import TERMINAL_STATUSES, Job, Probe
from app.schemas import (
    JobLinks,
    JobOut,
    JobPage,
    JobStatus,
    ProbeList,
    ProbeOut,
    Progress,
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
    job = queue.get_job(session, job_id, tenant)
    if job is None:
        raise _not_found(job_id)
    return job_out(job)


def _encode_token(created_at: datetime, job_id: str, status: str | None) -> str:
    raw = json.dumps([created_at.isoformat(), job_id, status], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_token(token: str, status: str | None) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, job_id, token_status = json.loads(raw)
        position = (datetime.fromisoformat(created), str(job_id))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise _field_problem(
            400, "page_token", "is not a token this server issued", "invalid-page-token"
        ) from exc
    if position[0].tzinfo is None:
        raise _field_problem(
            400, "page_token", "is not a token this server issued", "invalid-page-token"
        )
    if token_status != status:
        raise _field_problem(
            400,
            "page_token",
            f"was issued for status={token_status}, not status={status}; "
            "keep the other parameters the same while paging",
            "invalid-page-token",
        )
    return position


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
    rows = session.scalars(
        query.order_by(Job.created_at.desc(), Job.id.desc()).limit(page_size + 1)
    ).all()
    session.commit()
    jobs = [job_out(job) for job in rows[:page_size]]
    next_token = None
    if len(rows) > page_size:
        last = rows[page_size - 1]
        next_token = _encode_token(last.created_at, last.id, status)
    return JobPage(jobs=jobs, next_page_token=next_token)


def cancel_job(session: Session, *, job_id: str, tenant: str) -> JobOut:
    """queued → cancelled now; running → cancel requested (stops at its next interval)."""
    job = queue.get_job(session, job_id, tenant)
    if job is None:
        raise _not_found(job_id)
    if job.status in TERMINAL_STATUSES:
        raise _already_finished(job_id, job.status)
    job = queue.request_cancel(session, job_id, tenant)
    if job is None:
        raise _not_found(job_id)
    # The job may have finished between the read and the cancel; it keeps its outcome.
    if job.status in ("succeeded", "failed"):
        raise _already_finished(job_id, job.status)
    return job_out(job)


def _already_finished(job_id: str, status: str) -> ProblemError:
    return ProblemError(
        409,
        "Job already finished",
        f"job {job_id} is already {status}; only queued or running jobs can be cancelled",
        "job-finished",
    )


def get_recommendation(session: Session, *, job_id: str, tenant: str) -> dict[str, Any]:
    job = queue.get_job(session, job_id, tenant)
    if job is None:
        raise _not_found(job_id)
    if job.status != "succeeded":
        detail = f"job {job_id} is {job.status}"
        if job.status in ("queued", "running"):
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
    return result


def get_probes(session: Session, *, job_id: str, tenant: str) -> ProbeList:
    if queue.get_job(session, job_id, tenant) is None:
        raise _not_found(job_id)
    rows = session.scalars(
        select(Probe).where(Probe.job_id == job_id).order_by(Probe.created_at, Probe.id)
    ).all()
    session.commit()
    probes = []
    for probe in rows:
        result = dict(probe.result or {})
        records = result.pop("records", [])
        probes.append(
            ProbeOut(
                key=probe.key,
                config=probe.config,
                outcome=probe.outcome,
                seconds=probe.seconds,
                created_at=probe.created_at,
                records=records if isinstance(records, list) else [],
                summary=result,
            )
        )
    return ProbeList(job_id=job_id, probes=probes)


def check_database(session: Session) -> None:
    """Raise a 503 problem unless the database answers a trivial query."""
    try:
        session.execute(text("SELECT 1"))
        session.commit()
    except Exception as exc:  # any driver error means "not ready"; the detail says which
        raise ProblemError(
            503,
            "Database unavailable",
            f"the database does not answer: {type(exc).__name__}",
            "database-unavailable",
        ) from exc
