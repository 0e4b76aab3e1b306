"""ORM tables. Alembic (app/migrations/) is the only way the schema changes; its autogenerate diff
against these models is empty (tests/test_migrations.py).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.schemas import JobStatus

# Deterministic constraint names, so migrations can drop and alter them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (binary, indexable); plain JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return uuid.uuid4().hex


# What new_job_id makes: a string of any other shape names no job (and, with a NUL byte in it,
# would be refused by PostgreSQL as a query parameter), so the API answers 404 without a query.
JOB_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    SQLite stores no offset and hands back naive values; this converts to UTC on the way in and
    attaches UTC on the way out, so comparisons in Python and in SQL agree on both databases.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key"),
        # The claim query: the oldest queued job.
        Index("ix_jobs_status_created_at", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    tenant: Mapped[str] = mapped_column(String(64), default="default", index=True)
    # A string column with a CHECK (ck_jobs_status) on every backend, not a PostgreSQL enum type:
    # a new state is then one migration that replaces the CHECK, the same on SQLite. It holds
    # the values ("queued"), not the member names SQLAlchemy's Enum stores by default.
    status: Mapped[JobStatus] = mapped_column(
        Enum(
            JobStatus,
            native_enum=False,
            length=16,
            create_constraint=True,
            name="status",
            values_callable=lambda statuses: [s.value for s in statuses],
        ),
        default=JobStatus.QUEUED,
    )
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # sha256 of the spec's canonical JSON: an Idempotency-Key replay must carry the same spec.
    spec_hash: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # {phase, probes_done, probes_total, fraction, eta_seconds}
    progress: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The plugins the job needs (entry-point names; None: none): a worker claims only the jobs
    # whose plugins it has (app/queue.py claim).
    model_plugin: Mapped[str | None] = mapped_column(String(100))
    dataset_plugin: Mapped[str | None] = mapped_column(String(100))


class Probe(Base):
    """One finished probe of a job; stored as soon as it finishes so a re-claimed job resumes."""

    __tablename__ = "probes"
    __table_args__ = (UniqueConstraint("job_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    key: Mapped[str] = mapped_column(String(128))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    outcome: Mapped[str] = mapped_column(String(32))
    # ProbeResult.to_dict(), with its measurement `records`.
    result: Mapped[dict[str, Any]] = mapped_column(JSONType)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Recommendation(Base):
    __tablename__ = "recommendations"

    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    result: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Tenant(Base):
    """Who owns jobs and API keys; holds the secret its webhooks are signed with."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Standard Webhooks form: "whsec_" + base64 of 32 random bytes.
    webhook_secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(Base):
    """An API key of a tenant; only its sha256 is stored (app/auth.py says why that suffices)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    tenant: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenants.name", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255), default="")
    # The key's first characters, shown in listings so a person can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """One webhook event for one job; retried until delivered or out of attempts."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # A job ends once: the same event is never queued twice (worker and API may both try).
        UniqueConstraint("job_id", "event"),
        # The sender's query: pending deliveries that are due.
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    # Sent as `webhook-id`: stable across retries, so receivers can drop duplicates.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    tenant: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    url: Mapped[str] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Every attempt: [{at, status_code, error, seconds}].
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Worker(Base):
    """What one worker process can run, as it advertised on start and with every heartbeat
    (app/fleet.py); the API checks plugin specs against the live ones."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # worker.main.new_worker_id
    # Entry-point name → "distribution version", per group (edgetune.models, edgetune.datasets).
    models: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    datasets: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    device: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Live: seen within a lease, and not stopped.
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class MeasuredPoint(Base):
    """One measurement of a user's own training run, reported for a job by edgetune.monitor
    (POST /v1/jobs/{id}/trajectory); keyed by (job, run, step), so a retried report stores it
    once. The job's tenant owns it (read through the job only)."""

    __tablename__ = "measured_points"
    __table_args__ = (UniqueConstraint("job_id", "run", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    run: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))  # the order parameter: "J2"
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float | None] = mapped_column(Float)
    value: Mapped[float] = mapped_column(Float)
    J: Mapped[list[float]] = mapped_column(JSONType)  # per hidden layer
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
