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
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    Integer,
    and_,
    case,
    cast,
    func,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy.orm import Session

from app import fleet, queue, webhooks
from app.config import Settings
from app.errors import ProblemError, database_unavailable
from app.limits import check_spec
from app.models import JOB_ID_PATTERN, Job, MeasuredPoint, Probe, utcnow
from app.models import Recommendation as StoredResult
from app.plots import JobTrajectory, PlotData
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
    ResultSummary,
    Verdict,
)
from edgetune.measured import (
    MAX_POINTS_PER_RUN,
    MeasuredRun,
    MeasuredTrajectories,
    TrajectoryPoint,
    TrajectoryReport,
)

# A unique start of a job id is as good as the id (at least 6 hex digits: 16 million values).
JOB_ID_PREFIX = re.compile(r"[0-9a-f]{6,31}")
# Printable ASCII without spaces, as the idempotency-key draft's examples; bounded by the column.
MAX_IDEMPOTENCY_KEY = 255


def job_out(job: Job, result: ResultSummary | None = None) -> JobOut:
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
        result=result,
    )


def _result_summaries(session: Session, jobs: Sequence[Job]) -> dict[str, ResultSummary]:
    """The succeeded jobs' results in brief, by job id, in one query for any number of jobs.
    Only three values are read out of each stored result (a whole one, with its fits and
    trajectories, is tens of kB)."""
    ids = [job.id for job in jobs if job.status == JobStatus.SUCCEEDED]
    if not ids:
        return {}
    stored = StoredResult.result
    query = select(
        StoredResult.job_id,
        stored["verdict"],
        stored[("hyperparameters", "learning_rate")].as_float(),
        stored[("hyperparameters", "batch_size")].as_integer(),
    ).where(StoredResult.job_id.in_(ids))
    with transaction(session):
        rows = session.execute(query).all()
    return {
        job_id: ResultSummary(
            verdict=Verdict.model_validate(verdict) if verdict else None,
            learning_rate=learning_rate,
            batch_size=batch_size,
        )
        for job_id, verdict, learning_rate, batch_size in rows
    }


def _not_found(job_id: str) -> ProblemError:
    return ProblemError(404, "Job not found", f"there is no job {job_id!r}", "job-not-found")


def _owned_job(session: Session, job_id: str, tenant: str) -> Job:
    """The tenant's job `job_id` (or the one job whose id starts with it, as the CLI shows ids
    cut to fit), or the 404 problem. Every job id from a URL comes in here: one that cannot be a
    job id is not looked up (PostgreSQL refuses a NUL byte in a parameter)."""
    if JOB_ID_PATTERN.fullmatch(job_id):
        job = queue.get_job(session, job_id, tenant)
    elif JOB_ID_PREFIX.fullmatch(job_id):
        job = _job_by_prefix(session, job_id, tenant)
    else:
        job = None
    if job is None:
        raise _not_found(job_id)
    return job


def _job_by_prefix(session: Session, prefix: str, tenant: str) -> Job | None:
    # Hex digits only, so no LIKE wildcard can be in the pattern.
    jobs = session.scalars(
        select(Job).where(Job.tenant == tenant, Job.id.like(f"{prefix}%")).limit(2)
    ).all()
    if len(jobs) > 1:
        raise ProblemError(
            409,
            "Ambiguous job id",
            f"several jobs start with {prefix!r}: give more of the id",
            "ambiguous-job-id",
        )
    return jobs[0] if jobs else None


def _field_problem(status: int, field: str, message: str, kind: str) -> ProblemError:
    return ProblemError(
        status,
        "Invalid request" if status == 400 else "Unprocessable request",
        f"{field}: {message}",
        kind,
        errors=[{"field": field, "message": message, "type": kind}],
    )


def _check_plugins(session: Session, spec: RecommendationSpec, settings: Settings) -> str | None:
    """The 422 problem for a plugin no worker advertises; else why the job will wait (None: a
    live worker has its plugins, or it needs none)."""
    check = fleet.check_plugins(session, spec, settings.lease_seconds)
    if check.unknown:
        raise ProblemError(
            422,
            "Spec names a plugin no worker has",
            "; ".join(f"{field}: {message}" for field, message in check.unknown),
            "plugin-unknown",
            errors=[{"field": f, "message": m, "type": "plugin"} for f, m in check.unknown],
        )
    return check.waiting


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
    waiting = _check_plugins(session, spec, settings)
    try:
        job, created = queue.create_job(
            session,
            spec=spec.model_dump(mode="json"),
            tenant=tenant,
            idempotency_key=idempotency_key,
            max_attempts=settings.max_attempts,
            progress=None if waiting is None else {"phase": "queued", "message": waiting},
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


def get_job(
    session: Session, *, job_id: str, tenant: str, lease_seconds: float | None = None
) -> JobOut:
    """The job; with `lease_seconds`, a queued job needing plugins says whether it waits for a
    worker that has them (fleet.check_plugins)."""
    job = _owned_job(session, job_id, tenant)
    out = job_out(job, _result_summaries(session, [job]).get(job.id))
    _say_why_waiting(session, job, out, lease_seconds)
    return out


def _say_why_waiting(session: Session, job: Job, out: JobOut, lease_seconds: float | None) -> None:
    """A queued job needing plugins says whether it waits for a worker that has them."""
    plugins = job.model_plugin or job.dataset_plugin
    if lease_seconds is not None and job.status == JobStatus.QUEUED and plugins:
        # Read now, not at submission: the workers that had its plugins may have gone since.
        spec = RecommendationSpec.model_validate(job.spec)
        out.progress.message = fleet.check_plugins(session, spec, lease_seconds).waiting


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
    lease_seconds: float | None = None,
) -> JobPage:
    """Newest first, by keyset (created_at, id): pages stay consistent while jobs are added.
    With `lease_seconds`, queued jobs needing plugins say why they wait, as in get_job."""
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
    page = rows[:page_size]
    summaries = _result_summaries(session, page)
    jobs = [job_out(job, summaries.get(job.id)) for job in page]
    for job, out in zip(page, jobs, strict=True):
        _say_why_waiting(session, job, out, lease_seconds)
    next_token = None
    if len(rows) > page_size:
        last = rows[page_size - 1]
        next_token = _encode_token(last.created_at, last.id, status)
    return JobPage(jobs=jobs, next_page_token=next_token)


def cancel_job(session: Session, *, job_id: str, tenant: str) -> JobOut:
    """queued → cancelled now; running → cancel requested (stops at its next interval)."""
    owned = _owned_job(session, job_id, tenant)
    job_id, status = owned.id, owned.status  # the full id, when a unique prefix was given
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
    job_id = job.id  # the full id, when a unique prefix was given
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
    job_id = _owned_job(session, job_id, tenant).id  # the full id, for a unique prefix too
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


def _upsert(session: Session) -> Any:
    """The dialect's INSERT … ON CONFLICT: one statement, atomic under concurrent retries."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(MeasuredPoint)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(MeasuredPoint)


def report_trajectory(
    session: Session, *, job_id: str, tenant: str, report: TrajectoryReport
) -> MeasuredTrajectories:
    """Store a run's points on the tenant's job: (run, step) already stored is replaced, so the
    same report twice stores it once. Returns every run of the job."""
    job_id = _owned_job(session, job_id, tenant).id
    rows = {  # the last point of a step wins inside one report too (no duplicate in one INSERT)
        p.step: {
            "job_id": job_id,
            "run": report.run,
            "kind": report.kind,
            "step": p.step,
            "epoch": p.epoch,
            "value": p.value,
            "J": p.J,
            "created_at": utcnow(),
        }
        for p in report.points
    }
    insert = _upsert(session)
    statement = insert.values(list(rows.values())).on_conflict_do_update(
        index_elements=["job_id", "run", "step"],
        set_={c: insert.excluded[c] for c in ("kind", "epoch", "value", "J", "created_at")},
    )
    with transaction(session):
        stored = session.scalar(
            select(func.count()).where(
                MeasuredPoint.job_id == job_id, MeasuredPoint.run == report.run
            )
        )
        # Replaced points count twice here: the bound errs on the safe side.
        if (stored or 0) + len(rows) > MAX_POINTS_PER_RUN:
            message = f"run {report.run!r} would hold more than {MAX_POINTS_PER_RUN:,} points"
            raise _field_problem(422, "points", message, "validation-failed")
        session.execute(statement)
    return get_trajectory(session, job_id=job_id, tenant=tenant)


def measured_runs(session: Session, job_id: str) -> list[MeasuredRun]:
    """A job's reported runs, by name, each run's points by step."""
    with transaction(session):
        rows = session.scalars(
            select(MeasuredPoint)
            .where(MeasuredPoint.job_id == job_id)
            .order_by(MeasuredPoint.run, MeasuredPoint.step)
        ).all()
    runs: dict[str, MeasuredRun] = {}
    for row in rows:
        run = runs.get(row.run)
        if run is None:
            run = runs[row.run] = MeasuredRun.model_validate(
                {"run": row.run, "kind": row.kind, "points": []}
            )
        run.points.append(
            TrajectoryPoint(step=row.step, epoch=row.epoch, value=row.value, J=row.J)
        )
    return list(runs.values())


def get_trajectory(session: Session, *, job_id: str, tenant: str) -> MeasuredTrajectories:
    job_id = _owned_job(session, job_id, tenant).id
    return MeasuredTrajectories(job_id=job_id, runs=measured_runs(session, job_id))


def plot_data(session: Session, *, job_id: str, tenant: str) -> PlotData:
    """The job's spec, probes and recommendation, for app.plots (404 problem for another
    tenant's job)."""
    job = get_job(session, job_id=job_id, tenant=tenant)
    probes = get_probes(session, job_id=job_id, tenant=tenant).probes
    stored = (
        queue.get_recommendation(session, job.id) if job.status == JobStatus.SUCCEEDED else None
    )
    recommendation = None if stored is None else Recommendation.model_validate(stored)
    return PlotData(job.id, job.status, probes, recommendation, measured_runs(session, job.id))


def compare_data(session: Session, *, job_ids: Sequence[str], tenant: str) -> list[JobTrajectory]:
    """The jobs' results for the compare plot, in the order given (404 problem for any id that is
    not one of the tenant's jobs). One lookup per id (at most plots.MAX_COMPARED), then one query
    for every result."""
    jobs = list({job.id: job for job in (_owned_job(session, i, tenant) for i in job_ids)}.values())
    done = [job.id for job in jobs if job.status == JobStatus.SUCCEEDED]
    with transaction(session):
        rows = session.execute(
            select(StoredResult.job_id, StoredResult.result).where(StoredResult.job_id.in_(done))
        ).all()
    results = {job_id: Recommendation.model_validate(result) for job_id, result in rows}
    return [
        JobTrajectory(job.id, job.status, results.get(job.id), _spec_title(job.spec))
        for job in jobs
    ]


def _spec_title(spec: dict[str, Any]) -> str:
    """`mlp · digits`: what a legend tells jobs apart by, besides their ids."""
    model = spec.get("model") or {}
    dataset = spec.get("dataset") or {}
    return f"{model.get('type', '?')} · {dataset.get('name', '?')}"


@dataclass(frozen=True)
class Histogram:
    """Observations summarised as a Prometheus histogram: how many, their sum, and how many were
    at most each bound (cumulative, in the order of the bounds asked for)."""

    count: int
    total: float
    buckets: list[int]


@dataclass(frozen=True)
class JobStats:
    """Jobs and probes as GET /metrics reports them (app.metrics), over every tenant."""

    counts: dict[JobStatus, int]  # jobs by status; a status without jobs is absent
    # Finished jobs: seconds from first start to end, by final status (every terminal one).
    durations: dict[JobStatus, Histogram]
    probes: Histogram  # seconds of every stored probe
    # Training samples per second (steps·batch_size/seconds) of the newest probes that say.
    throughput: list[float]
    newest_heartbeat: datetime | None  # of any running job


def _duration_microseconds(postgresql: bool) -> ColumnElement[Any]:
    """finished_at - started_at of a job in whole microseconds, at least 0, in SQL: exact
    integers on both databases, so bucket edges compare as they would in Python. The dialects
    spell timestamp differences differently."""
    if postgresql:
        # date_part is float8 (EXTRACT's numeric is twice as slow here); rounded, exact to the
        # microsecond for any duration under 2^53 µs (285 years).
        seconds = func.date_part("epoch", Job.finished_at - Job.started_at)
        micros: ColumnElement[Any] = cast(func.round(seconds * 1_000_000), BigInteger)
    else:
        # SQLite holds these columns as the text 'YYYY-MM-DD HH:MM:SS.ffffff' (SQLAlchemy's
        # storage format, always with microseconds). Whole seconds from the first 19
        # characters only: SQLite's date functions round to the millisecond.
        def whole(column: Any) -> ColumnElement[Any]:
            return cast(func.strftime("%s", func.substr(column, 1, 19)), Integer)

        def fraction(column: Any) -> ColumnElement[Any]:
            return cast(func.substr(column, 21, 6), Integer)

        micros = (whole(Job.finished_at) - whole(Job.started_at)) * 1_000_000 + (
            fraction(Job.finished_at) - fraction(Job.started_at)
        )
    # Clamped at 0 as a scalar function: a CASE would compute the difference twice per row.
    return func.greatest(micros, 0) if postgresql else func.max(micros, 0)


def _durations(session: Session, bounds: Sequence[float]) -> dict[JobStatus, Histogram]:
    """Finished jobs' durations by final status: one aggregate query, a few dozen rows back
    however many jobs there are. Bounds are inlined: fixed constants, and in microseconds past
    2^31 a bound parameter would overflow PostgreSQL's INTEGER."""
    bounds_us = [round(le * 1_000_000) for le in bounds]
    assert bounds_us == sorted(bounds_us), "histogram bounds must ascend"
    postgresql = session.get_bind().dialect.name == "postgresql"
    finished = (
        select(Job.status.label("status"), _duration_microseconds(postgresql).label("micros"))
        .where(
            Job.status.in_(TERMINAL_STATUSES),
            Job.started_at.is_not(None),
            Job.finished_at.is_not(None),
        )
        .cte("finished_jobs")
    )
    per_status: dict[JobStatus, tuple[int, int, list[int]]] = {}  # count, µs, cumulative
    if postgresql:
        # One width_bucket per row (how many thresholds are <= micros; micros <= b ⇔ micros <
        # b + 1), grouped: half the time of a CASE per bucket per row at 200k jobs.
        status, micros = finished.c.status, finished.c.micros
        thresholds: ColumnElement[Any] = literal_column(
            f"ARRAY[{','.join(str(b + 1) for b in bounds_us)}]::bigint[]"
        )
        bucket = func.width_bucket(micros, thresholds).label("bucket")
        rows = session.execute(
            select(status, bucket, func.count(), func.sum(micros)).group_by(status, bucket)
        ).all()
        for state, index, count, total in rows:
            n, summed, cumulative = per_status.get(state, (0, 0, [0] * len(bounds_us)))
            for i in range(int(index), len(bounds_us)):
                cumulative[i] += int(count)
            per_status[state] = (n + int(count), summed + int(total), cumulative)
    else:
        # SQLite sorts for a GROUP BY on the bucket, slower than a CASE per bucket over the
        # CTE; MATERIALIZED, or each CASE would re-parse both timestamps of every row.
        finished = finished.prefix_with("MATERIALIZED")
        status, micros = finished.c.status, finished.c.micros
        columns = [
            func.sum(case((micros <= literal_column(str(b)), 1), else_=0)) for b in bounds_us
        ]
        rows = session.execute(
            select(status, func.count(), func.sum(micros), *columns).group_by(status)
        ).all()
        for state, count, total, *cumulative in rows:
            per_status[state] = (int(count), int(total), [int(n) for n in cumulative])
    empty = (0, 0, [0] * len(bounds_us))
    histograms = {}
    for state in JobStatus:
        if state in TERMINAL_STATUSES:
            n, summed, cumulative = per_status.get(state, empty)
            # Exact integer microseconds summed, then one division: no float error accumulates.
            histograms[state] = Histogram(n, summed / 1e6, cumulative)
    return histograms


def _bucket_columns(value: Any, bounds: Sequence[float]) -> list[Any]:
    return [func.coalesce(func.sum(case((value <= le, 1), else_=0)), 0) for le in bounds]


def job_stats(
    session: Session,
    *,
    job_buckets: Sequence[float],
    probe_buckets: Sequence[float],
    newest_probes: int,
) -> JobStats:
    """Aggregates only, one query per metric family: the histograms are counted in SQL, so a
    scrape reads a few dozen rows however many jobs and probes there are. Its cost is one scan
    of the finished jobs and one of the probes (about 0.1 s for 200k jobs on PostgreSQL)."""
    with transaction(session):
        counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        durations = _durations(session, job_buckets)
        probes = session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(Probe.seconds), 0.0),
                *_bucket_columns(Probe.seconds, probe_buckets),
            )
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
    if newest_beat is not None and newest_beat.tzinfo is None:
        # func.max bypasses the column type on SQLite: the value comes back naive UTC.
        newest_beat = newest_beat.replace(tzinfo=UTC)
    return JobStats(
        counts=counts,
        durations=durations,
        probes=Histogram(int(probes[0]), float(probes[1]), [int(n) for n in probes[2:]]),
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
