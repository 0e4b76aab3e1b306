"""The HTTP endpoints: parse, call one service function, return a schema.

SQLAlchemy sessions are synchronous: every database call goes through `Database.run`, which runs
it in a worker thread, so the event loop never waits on the database.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar

import anyio
import anyio.to_thread
import yaml
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from app import service
from app.config import Settings
from app.errors import PROBLEM_MEDIA_TYPE, ProblemError
from app.schemas import Health, JobOut, JobPage, JobStatus, ProbeList, Problem, RecommendationSpec

JSON_MEDIA_TYPES = ("application/json",)
YAML_MEDIA_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
# Seconds a client should wait before polling a job (the worker reports progress about as often).
RETRY_AFTER_SECONDS = 2
# Safe loading only (no Python tags); libyaml's parser when PyYAML was built with it.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

P = ParamSpec("P")
T = TypeVar("T")


class Database:
    """The app's sessions, used from async endpoints: each call runs in one worker thread.

    One thread hop per request (open a session, call the service function, close it) instead of
    FastAPI's three for a sync generator dependency plus a sync endpoint. At most `threads` calls
    run at once, as many as the engine's pool keeps connections: more threads would only queue
    for a connection, or open and close overflow connections (and, on SQLite, rerun the PRAGMAs)
    on every request; under load that churn, not the queries, was most of a GET's time.
    """

    def __init__(self, sessions: sessionmaker[Session], threads: int) -> None:
        self.sessions = sessions
        self.limiter = anyio.CapacityLimiter(threads)

    async def run(
        self, fn: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        def call() -> T:
            with self.sessions() as session:
                return fn(session, *args, **kwargs)

        return await anyio.to_thread.run_sync(call, limiter=self.limiter)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_tenant() -> str:
    # One tenant until API keys exist; every query is already scoped by it.
    return "default"


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259) does not, and neither do we.
    raise ValueError(f"{name} is not valid JSON")


async def get_spec(request: Request) -> RecommendationSpec:
    """The spec from the request body (JSON, or YAML for people pasting example files)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type not in JSON_MEDIA_TYPES + YAML_MEDIA_TYPES:
        raise ProblemError(
            415,
            "Unsupported Media Type",
            f"send the spec as application/json (or application/yaml), not "
            f"{media_type or 'a body without Content-Type'}",
            "unsupported-media-type",
        )
    # The body-size middleware counts these bytes and stops at settings.max_body_bytes.
    raw = await request.body()
    if not raw.strip():
        raise ProblemError(
            400, "Empty body", "the request body is empty; send a spec", "empty-body"
        )
    try:
        if media_type in YAML_MEDIA_TYPES:
            # YAML parsing is slow Python (a second or more for a body at the size limit): off
            # the event loop, so one large request cannot stall every other.
            data = await anyio.to_thread.run_sync(yaml.load, raw, YAML_LOADER)
        else:
            data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        kind = "YAML" if media_type in YAML_MEDIA_TYPES else "JSON"
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, RecursionError):
            message = "nested too deeply"
        elif isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
            where = exc.problem_mark
            message = exc.problem
            if where is not None:
                message += f" (line {where.line + 1}, column {where.column + 1})"
        raise ProblemError(
            400, f"Invalid {kind}", f"the body is not valid {kind}: {message}", "invalid-body"
        ) from exc
    try:
        return RecommendationSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from exc


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
TenantDep = Annotated[str, Depends(get_tenant)]
SpecDep = Annotated[RecommendationSpec, Depends(get_spec)]

PROBLEM = {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}}
# The body is parsed by get_spec (to support YAML, 415 and exact size limits), so its schema is
# declared here; app/main.py adds RecommendationSpec to the OpenAPI components.
SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            media: {"schema": {"$ref": "#/components/schemas/RecommendationSpec"}}
            for media in ("application/json", "application/yaml")
        },
    }
}

router = APIRouter()


@router.post(
    "/v1/recommendations",
    status_code=202,
    response_model=JobOut,
    openapi_extra=SPEC_BODY,
    responses={
        200: {"description": "Idempotent replay: the job this Idempotency-Key created"},
        400: PROBLEM,
        409: PROBLEM,
        413: PROBLEM,
        415: PROBLEM,
        422: PROBLEM,
    },
    tags=["jobs"],
)
async def create_recommendation(
    spec: SpecDep,
    db: DatabaseDep,
    settings: SettingsDep,
    tenant: TenantDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JobOut:
    """Queue a recommendation job for the spec; poll the job at `Location`."""
    job, created = await db.run(
        service.submit,
        settings=settings,
        spec=spec,
        tenant=tenant,
        idempotency_key=idempotency_key,
    )
    response.status_code = 202 if created else 200
    response.headers["Location"] = job.links.self
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return job


@router.get("/v1/jobs", response_model=JobPage, responses={400: PROBLEM}, tags=["jobs"])
async def list_jobs(
    db: DatabaseDep,
    tenant: TenantDep,
    status: JobStatus | None = None,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
    page_token: Annotated[str | None, Query(max_length=512)] = None,
) -> JobPage:
    """Jobs, newest first; pass `next_page_token` back as `page_token` for the next page."""
    return await db.run(
        service.list_jobs, tenant=tenant, status=status, page_size=page_size, page_token=page_token
    )


@router.get("/v1/jobs/{job_id}", response_model=JobOut, responses={404: PROBLEM}, tags=["jobs"])
async def get_job(job_id: str, db: DatabaseDep, tenant: TenantDep) -> JobOut:
    return await db.run(service.get_job, job_id=job_id, tenant=tenant)


@router.post(
    "/v1/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses={404: PROBLEM, 409: PROBLEM},
    tags=["jobs"],
)
async def cancel_job(job_id: str, db: DatabaseDep, tenant: TenantDep) -> JobOut:
    """A queued job is cancelled at once; a running one stops at its next measurement."""
    return await db.run(service.cancel_job, job_id=job_id, tenant=tenant)


@router.get(
    "/v1/jobs/{job_id}/recommendation",
    response_model=dict[str, Any],
    responses={404: PROBLEM, 409: PROBLEM},
    tags=["jobs"],
)
async def get_recommendation(job_id: str, db: DatabaseDep, tenant: TenantDep) -> dict[str, Any]:
    """The recommendation JSON; 409 until the job has succeeded."""
    return await db.run(service.get_recommendation, job_id=job_id, tenant=tenant)


@router.get(
    "/v1/jobs/{job_id}/probes", response_model=ProbeList, responses={404: PROBLEM}, tags=["jobs"]
)
async def get_probes(job_id: str, db: DatabaseDep, tenant: TenantDep) -> ProbeList:
    """Each finished probe's config, outcome and measured time series."""
    return await db.run(service.get_probes, job_id=job_id, tenant=tenant)


@router.get("/livez", response_model=Health, tags=["health"])
async def livez() -> Health:
    """The process answers (no dependencies checked)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: PROBLEM}, tags=["health"])
async def readyz(db: DatabaseDep) -> Health:
    """The database answers."""
    await db.run(service.check_database)
    return Health(status="ok")
