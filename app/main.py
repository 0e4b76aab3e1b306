"""The application factory: create_app(settings) → FastAPI.

The lifespan owns the database engine (migrating the embedded SQLite default, refusing any other
database that is not at head). Every error leaves as one kind of document, RFC 9457
application/problem+json, from the handlers below; no traceback ever reaches a client.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import QueuePool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app import auth, deps, metrics, routes
from app.config import Settings
from app.db import make_engine, prepare_database, session_factory
from app.errors import PROBLEM_MEDIA_TYPE, ProblemError, database_unavailable
from app.schemas import RecommendationSpec, spec_field

log = logging.getLogger("edgetune.api")
# A validation problem lists at most this many fields in `detail` (all of them, up to
# MAX_FIELD_ERRORS, in `errors`): a 64-item list of wrong types must not make a 64-line detail.
DETAIL_FIELDS = 5
MAX_FIELD_ERRORS = 50
# Where pydantic/FastAPI put the request part first in an error location; clients know the field.
REQUEST_PARTS = ("body", "query", "path", "header", "cookie")


def problem_response(problem: ProblemError) -> JSONResponse:
    return JSONResponse(
        problem.to_dict(),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = list(loc)
    if parts and parts[0] in REQUEST_PARTS and len(parts) > 1:
        parts = parts[1:]
    return spec_field(parts)


def validation_problem(errors: list[Any]) -> ProblemError:
    fields = [
        {"field": field_path(e.get("loc", ())), "message": str(e.get("msg", "")), "type": e["type"]}
        for e in errors[:MAX_FIELD_ERRORS]
    ]
    detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:DETAIL_FIELDS])
    if len(errors) > DETAIL_FIELDS:
        detail += f" (and {len(errors) - DETAIL_FIELDS} more)"
    return ProblemError(422, "Validation failed", detail, "validation-failed", errors=fields)


async def on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(exc)


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem_response(validation_problem(list(exc.errors())))


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors: unknown route (404), wrong method (405), and the like."""
    assert isinstance(exc, StarletteHTTPException)
    title = HTTPStatus(exc.status_code).phrase
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        detail, kind = f"there is no resource at {request.url.path}", "not-found"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("allow", (exc.headers or {}).get("Allow", ""))
        detail, kind = f"{where} is not allowed; allowed: {allowed}", "method-not-allowed"
    else:
        detail, kind = f"{where}: {exc.detail}", title.lower().replace(" ", "-")
    return problem_response(
        ProblemError(exc.status_code, title, detail, kind, headers=dict(exc.headers or {}))
    )


async def on_database_error(request: Request, exc: Exception) -> JSONResponse:
    """The database refused or dropped the connection, or the pool had none to give: the request
    may succeed when retried, so 503 with Retry-After, not a 500. SQLAlchemy raises
    OperationalError for a failed connect on both drivers (and for SQLite's "database is
    locked"), and marks any error that lost the connection `connection_invalidated`; every other
    database error is a bug, a 500."""
    down = isinstance(exc, OperationalError | PoolTimeout) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )
    if not down:
        return await on_unexpected_error(request, exc)
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(database_unavailable(exc))


async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the server log, never to the client.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        ProblemError(
            500,
            "Internal Server Error",
            "the server failed to handle this request; it has been logged",
            "internal-error",
        )
    )


# A refused body is still read (and discarded) up to this many bytes before the 413 goes out:
# a client that is still sending would otherwise see a reset connection instead of the answer.
DRAIN_LIMIT = 64 * 1024 * 1024


async def _drain(receive: Receive, more: bool = True) -> None:
    drained = 0
    while more and drained < DRAIN_LIMIT:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        more = message.get("more_body", False)


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, before anything parses them.

    Checks Content-Length up front, and counts the bytes actually received as well, since a
    chunked body declares no length and a declared length can lie.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: str) -> ProblemError:
        return ProblemError(
            413,
            "Content Too Large",
            f"the request body is {size}; this server accepts at most {self.max_bytes} bytes",
            "body-too-large",
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                problem = ProblemError(
                    400, "Bad Request", "Content-Length is not a number", "invalid-header"
                )
                await problem_response(problem)(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                size = f"{int(declared)} bytes (Content-Length)"
                await _drain(receive)
                await problem_response(self._too_large(size))(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the endpoint's body read, so the problem handler answers it.
                    await _drain(receive, message.get("more_body", False))
                    raise self._too_large(f"over {self.max_bytes} bytes")
            return message

        await self.app(scope, counting_receive, send)


class ProblemHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, except that a request its parser refuses (a Content-Length
    that is not a number, a malformed request line or header) is answered with a problem
    document as well. uvicorn writes that 400 itself, before the app (and the handlers above)
    sees anything. Every server of the app uses it: `uvicorn --http app.main:ProblemHttpProtocol`
    (Dockerfile, README), `uvicorn.Config(http=ProblemHttpProtocol)` (edgetune serve)."""

    def send_400_response(self, msg: str) -> None:
        problem = ProblemError(
            400,
            "Bad Request",
            "the server cannot parse this HTTP request: a malformed request line or header "
            "(such as a Content-Length that is not a number)",
            "invalid-http",
        )
        body = json.dumps(problem.to_dict(), separators=(",", ":")).encode()
        defaults = self.server_state.default_headers  # date, server
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in defaults]
        head += [
            f"content-type: {PROBLEM_MEDIA_TYPE}\r\n".encode(),
            f"content-length: {len(body)}\r\n".encode(),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def _package_version() -> str:
    try:
        return version("edgetune")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(settings: Settings) -> FastAPI:
    """The API for `settings`; the database is opened (and checked) when the app starts."""
    auth.check_auth_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings)
        try:
            # Blocking, but only once at start-up, before any request is served.
            prepare_database(settings, engine)
            # As many request threads as pooled connections (SQLAlchemy's default pool: 5).
            threads = engine.pool.size() if isinstance(engine.pool, QueuePool) else 1
            app.state.database = deps.Database(session_factory(engine), threads)
            # Everything built so far (modules, the app, its schemas) lives as long as the
            # process: frozen out of the collector, a full collection no longer walks it, which
            # under load showed as pauses of every request for 100-200 ms a few times a minute.
            gc.collect()
            gc.freeze()
            yield
        finally:
            engine.dispose()

    app = FastAPI(
        title="edgetune",
        version=_package_version(),
        summary="Hyperparameters at the edge of chaos, measured from short probing runs",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.database = None  # set by the lifespan

    def sessions() -> Any:
        return app.state.database.sessions if app.state.database is not None else None

    app.state.metrics = metrics.Metrics(sessions)
    app.include_router(routes.router)
    app.mount("/static", StaticFiles(directory=routes.STATIC_DIR), name="static")
    app.include_router(metrics.router)
    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(DBAPIError, on_database_error)
    app.add_exception_handler(PoolTimeout, on_database_error)
    app.add_exception_handler(Exception, on_unexpected_error)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Outside the body limit, so its 413s are counted too.
    app.add_middleware(metrics.HttpMetrics, metrics=app.state.metrics)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            problem_ref = {"$ref": "#/components/schemas/Problem"}
            spec = RecommendationSpec.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(spec.pop("$defs", {}))
            components["RecommendationSpec"] = spec
            # Every operation that takes the API key can answer 401.
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    if operation.get("security"):
                        operation.setdefault("responses", {})["401"] = {
                            "description": "Missing, invalid or revoked X-API-Key",
                            "content": {PROBLEM_MEDIA_TYPE: {"schema": problem_ref}},
                        }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override
    return app


def app_from_env() -> FastAPI:
    """Settings from the environment; for `uvicorn --factory app.main:app_from_env` (with
    `--http app.main:ProblemHttpProtocol`)."""
    return create_app(Settings())
