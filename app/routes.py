"""The HTTP endpoints: parse, call one service function, return a schema.

What they depend on (settings, the database, the caller's tenant, the parsed spec) is app.deps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import FileResponse, HTMLResponse

from app import plots, service
from app.deps import CallerDep, DatabaseDep, SettingsDep, SpecDep, TenantDep
from app.errors import PROBLEM_MEDIA_TYPE, PROBLEM_TYPES, ProblemError
from app.schemas import (
    TERMINAL_STATUSES,
    Health,
    JobOut,
    JobPage,
    JobStatus,
    ProbeList,
    Problem,
    Recommendation,
)
from edgetune.measured import MeasuredTrajectories, TrajectoryReport

# Seconds a client should wait before polling a job (the worker reports progress about as often).
RETRY_AFTER_SECONDS = 2
RETRY_AFTER = {
    "description": "Seconds to wait before polling the job again",
    "schema": {"type": "integer"},
}

PROBLEM = {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}}
# The body is parsed by app.deps.get_spec (to support YAML, 415 and exact size limits), so its
# schema is declared here; app/main.py adds RecommendationSpec to the OpenAPI components.
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
        202: {
            "description": "Queued: poll the job at Location",
            "headers": {
                "Location": {"description": "The job's URL", "schema": {"type": "string"}},
                "Retry-After": RETRY_AFTER,
            },
        },
        400: PROBLEM,
        409: PROBLEM,
        413: PROBLEM,
        415: PROBLEM,
        422: PROBLEM,
    },
    tags=["jobs"],
)
async def create_recommendation(
    # The key is checked first: an unauthenticated body is never parsed.
    tenant: TenantDep,
    spec: SpecDep,
    db: DatabaseDep,
    settings: SettingsDep,
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
    caller: CallerDep,
    settings: SettingsDep,
    status: JobStatus | None = None,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
    page_token: Annotated[str | None, Query(max_length=512)] = None,
) -> JobPage:
    """Jobs, newest first; pass `next_page_token` back as `page_token` for the next page."""
    return await db.run_as(
        caller,
        service.list_jobs,
        status=status,
        page_size=page_size,
        page_token=page_token,
        lease_seconds=settings.lease_seconds,
    )


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobOut,
    responses={
        200: {"description": "The job", "headers": {"Retry-After": RETRY_AFTER}},
        404: PROBLEM,
    },
    tags=["jobs"],
)
async def get_job(
    job_id: str, db: DatabaseDep, caller: CallerDep, settings: SettingsDep, response: Response
) -> JobOut:
    """The job's status and progress; while it has not ended, Retry-After says when to poll."""
    job = await db.run_as(
        caller, service.get_job, job_id=job_id, lease_seconds=settings.lease_seconds
    )
    if job.status not in TERMINAL_STATUSES:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return job


@router.post(
    "/v1/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses={404: PROBLEM, 409: PROBLEM},
    tags=["jobs"],
)
async def cancel_job(job_id: str, db: DatabaseDep, caller: CallerDep) -> JobOut:
    """A queued job is cancelled at once; a running one stops at its next measurement."""
    return await db.run_as(caller, service.cancel_job, job_id=job_id)


@router.get(
    "/v1/jobs/{job_id}/recommendation",
    response_model=Recommendation,
    responses={404: PROBLEM, 409: PROBLEM},
    tags=["jobs"],
)
async def get_recommendation(job_id: str, db: DatabaseDep, caller: CallerDep) -> Recommendation:
    """The recommended hyperparameters, the edge-of-chaos summary and the fits behind them,
    with validity flags and cost; 409 until the job has succeeded."""
    return await db.run_as(caller, service.get_recommendation, job_id=job_id)


@router.get(
    "/v1/jobs/{job_id}/probes", response_model=ProbeList, responses={404: PROBLEM}, tags=["jobs"]
)
async def get_probes(job_id: str, db: DatabaseDep, caller: CallerDep) -> ProbeList:
    """Each finished probe's config, outcome and measured time series."""
    return await db.run_as(caller, service.get_probes, job_id=job_id)


@router.post(
    "/v1/jobs/{job_id}/trajectory",
    response_model=MeasuredTrajectories,
    responses={404: PROBLEM, 413: PROBLEM, 422: PROBLEM},
    tags=["jobs"],
)
async def report_trajectory(
    job_id: str, report: TrajectoryReport, db: DatabaseDep, caller: CallerDep
) -> MeasuredTrajectories:
    """Store points of your own training run (edgetune.monitor sends them), shown beside the
    predicted trajectory; a point sent again (same run and step) replaces itself."""
    return await db.run_as(caller, service.report_trajectory, job_id=job_id, report=report)


@router.get(
    "/v1/jobs/{job_id}/trajectory",
    response_model=MeasuredTrajectories,
    responses={404: PROBLEM},
    tags=["jobs"],
)
async def get_trajectory(job_id: str, db: DatabaseDep, caller: CallerDep) -> MeasuredTrajectories:
    """Every run's measured order parameter reported for the job, each by step."""
    return await db.run_as(caller, service.get_trajectory, job_id=job_id)


# A plot route's responses: the image in every format it renders, or a problem.
PLOT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {media: {} for media in plots.MEDIA_TYPES.values()}},
    400: PROBLEM,
    404: PROBLEM,
    409: PROBLEM,
}


@router.get(
    "/v1/jobs/{job_id}/plots/{name}",
    response_class=Response,
    responses=PLOT_RESPONSES,
    tags=["jobs"],
)
async def get_plot(
    job_id: str,
    name: str,
    db: DatabaseDep,
    caller: CallerDep,
    format: Annotated[str | None, Query(description="png (default) or svg")] = None,
) -> Response:
    """A plot of the job: `order`, `collapse`, `growth` or `trajectory` (also `order.svg`, ...);
    409 until the job has the probes (order, collapse) or the recommendation (growth,
    trajectory) it needs."""
    plot, chosen = plots.parse_name(name, format)
    data = await db.run_as(caller, service.plot_data, job_id=job_id)
    return await _rendered(chosen, plots.render, plot, data, chosen)


@router.get(
    "/v1/plots/order",
    response_class=Response,
    responses={**PLOT_RESPONSES, 422: PROBLEM},
    tags=["jobs"],
)
async def compare_plot(
    db: DatabaseDep,
    caller: CallerDep,
    jobs: Annotated[
        str,
        Query(
            description=f"Comma-separated job ids (or unique starts), 1 to {plots.MAX_COMPARED}",
            max_length=4096,
        ),
    ],
    format: Annotated[str | None, Query(description="png (default) or svg")] = None,
) -> Response:
    """Several jobs compared on one plot: each recommended run's order parameter over its
    epochs, as predicted (and as measured, for verified jobs). Jobs without a recommendation are
    named on the plot; 409 when none of them has one, 404 for an id that is not your job."""
    job_ids, chosen = plots.parse_job_ids(jobs), plots.parse_format(format)
    data = await db.run_as(caller, service.compare_data, job_ids=job_ids)
    return await _rendered(chosen, plots.render_compare, data, chosen)


async def _rendered(chosen: plots.Format, render: Callable[..., bytes], *args: Any) -> Response:
    """`render(*args)` as the response, or the 409 problem while the data it needs is missing."""
    try:
        # Rendering is CPU work (a few hundred ms): off the event loop, outside the DB limiter.
        body = await anyio.to_thread.run_sync(render, *args)
    except plots.PlotUnavailable as exc:
        raise ProblemError(409, "Plot not available yet", str(exc), "plot-not-ready") from exc
    # Plots change while a job runs: the browser revalidates instead of showing a stale one.
    return Response(
        body, media_type=plots.MEDIA_TYPES[chosen], headers={"Cache-Control": "no-cache"}
    )


@router.get("/problems/{kind}", include_in_schema=False, response_class=HTMLResponse)
async def problem_type(kind: str) -> HTMLResponse:
    """What a problem `type` URI means: each error response's type resolves here."""
    meaning = PROBLEM_TYPES.get(kind)
    if meaning is None:
        raise ProblemError(404, "Unknown problem type", f"no problem type {kind!r}", "not-found")
    page = (
        f"<!doctype html><title>edgetune problem: {kind}</title><h1>{kind}</h1><p>{meaning}</p>"
        "<p>Every error of the edgetune API is an RFC 9457 problem (application/problem+json): "
        "its <code>title</code> and <code>detail</code> say what happened to this request. "
        'The API is documented at <a href="/docs">/docs</a>.</p>'
    )
    return HTMLResponse(page)


# The dashboard: one static page (app/static) that reads the API from the browser. It needs no
# API key to load; the page asks for one when the API answers 401.
STATIC_DIR = Path(__file__).resolve().parent / "static"


@router.get("/", include_in_schema=False)
@router.get("/jobs/{job_id}", include_in_schema=False)
@router.get("/compare", include_in_schema=False)
async def dashboard() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/livez", response_model=Health, tags=["health"])
async def livez() -> Health:
    """The process answers (no dependencies checked)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: PROBLEM}, tags=["health"])
async def readyz(db: DatabaseDep) -> Health:
    """The database answers."""
    await db.run(service.check_database)
    return Health(status="ok")
