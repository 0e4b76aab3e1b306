"""The HTTP endpoints: parse, call one service function, return a schema.

Endpoints are plain `def`s: SQLAlchemy sessions are synchronous, so FastAPI runs each request in
its thread pool and the event loop never waits on the database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app import service
from app.config import Settings
from app.errors import PROBLEM_MEDIA_TYPE, ProblemError
from app.schemas import Health, JobOut, JobPage, JobStatus, ProbeList, Problem, RecommendationSpec

JSON_MEDIA_TYPES = ("application/json",)
YAML_MEDIA_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
# Seconds a client should wait before polling a job (the worker reports progress about as often).
RETRY_AFTER_SECONDS = 2


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


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
            data = yaml.safe_load(raw)
        else:
            data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        kind = "YAML" if media_type in YAML_MEDIA_TYPES else "JSON"
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, RecursionError):
            message = "nested too deeply"
        raise ProblemError(
            400, f"Invalid {kind}", f"the body is not valid {kind}: {message}", "invalid-body"
        ) from exc
    try:
        return RecommendationSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from exc


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session)]
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
def create_recommendation(
    spec: SpecDep,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JobOut:
    """Queue a recommendation job for the spec; poll the job at `Location`."""
    job, created = service.submit(
        session, settings=settings, spec=spec, tenant=tenant, idempotency_key=idempotency_key
    )
    response.status_code = 202 if created else 200
    response.headers["Location"] = job.links.self
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return job


@router.get("/v1/jobs", response_model=JobPage, responses={400: PROBLEM}, tags=["jobs"])
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    status: JobStatus | None = None,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
    page_token: Annotated[str | None, Query(max_length=512)] = None,
) -> JobPage:
    """Jobs, newest first; pass `next_page_token` back as `page_token` for the next page."""
    return service.list_jobs(
        session, tenant=tenant, status=status, page_size=page_size, page_token=page_token
    )


@router.get("/v1/jobs/{job_id}", response_model=JobOut, responses={404: PROBLEM}, tags=["jobs"])
def get_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobOut:
    return service.get_job(session, job_id=job_id, tenant=tenant)


@router.post(
    "/v1/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses={404: PROBLEM, 409: PROBLEM},
    tags=["jobs"],
)
def cancel_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobOut:
    """A queued job is cancelled at once; a running one stops at its next measurement."""
    return service.cancel_job(session, job_id=job_id, tenant=tenant)


@router.get(
    "/v1/jobs/{job_id}/recommendation",
    response_model=dict[str, Any],
    responses={404: PROBLEM, 409: PROBLEM},
    tags=["jobs"],
)
def get_recommendation(job_id: str, session: SessionDep, tenant: TenantDep) -> dict[str, Any]:
    """The recommendation JSON; 409 until the job has succeeded."""
    return service.get_recommendation(session, job_id=job_id, tenant=tenant)


@router.get(
    "/v1/jobs/{job_id}/probes", response_model=ProbeList, responses={404: PROBLEM}, tags=["jobs"]
)
def get_probes(job_id: str, session: SessionDep, tenant: TenantDep) -> ProbeList:
    """Each finished probe's config, outcome and measured time series."""
    return service.get_probes(session, job_id=job_id, tenant=tenant)


@router.get("/livez", response_model=Health, tags=["health"])
async def livez() -> Health:
    """The process answers (no dependencies checked)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: PROBLEM}, tags=["health"])
def readyz(engine: EngineDep) -> Health:
    """The database answers."""
    service.check_database(engine)
    return Health(status="ok")
