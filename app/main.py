"""The application factory: create_app(settings) → FastAPI.

The lifespan owns the database engine (migrating the embedded SQLite default, refusing any other
database that is not at head). Every error leaves as one kind of document, RFC 9457
application/problem+json, from the handlers below; no traceback ever reaches a client.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httptools
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
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
        # No semantics beyond the status code (RFC 9457 §4.2.1).
        detail, kind = f"{where}: {exc.detail}", "about:blank"
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


# Answered whatever the connection count (ProblemHttpProtocol.on_headers_complete).
LIVENESS_PATH = b"/livez"


class HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a request head that is refused."""


def _app_settings(app: Any) -> Settings | None:
    """The Settings of the edgetune app inside uvicorn's wrappers (proxy headers, logging)."""
    for _ in range(8):
        settings = getattr(getattr(app, "state", None), "settings", None)
        if isinstance(settings, Settings):
            return settings
        app = getattr(app, "app", None)
    return None


class ProblemHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, hardened, with its refusals as problem documents. Every
    server of the app uses it: `uvicorn --http app.main:ProblemHttpProtocol` (Dockerfile,
    compose, README), `uvicorn.Config(http=ProblemHttpProtocol)` (edgetune serve, the tests).

    uvicorn alone has no limit on a request head's size (a 64 MB header was read whole) and no
    deadline for it (a connection that sends half a head, or nothing, is kept for ever: 1000 of
    them made /livez fail). Here, from the app's Settings:
    - a head (request line and headers) over `max_header_bytes` is answered 431 and the
      connection closed, as soon as that many bytes have arrived without the head ending;
    - a head not complete within `header_timeout_seconds` of the connection (or, on a kept-alive
      connection, of the next request's first byte) closes the connection (408 when part of a
      head arrived);
    - `max_connections` is uvicorn's `limit_concurrency` when the server sets none: past it a
      request is answered 503 (except /livez), and the deadline above reaps the idle
      connections.
    A request uvicorn's parser refuses (a malformed request line or header, a Content-Length
    that is not a number) is answered 400, a problem document as well."""

    def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = _app_settings(self.app)
        defaults = Settings.model_fields
        self.max_header_bytes: int = (
            settings.max_header_bytes if settings else defaults["max_header_bytes"].default
        )
        self.header_timeout: float = (
            settings.header_timeout_seconds
            if settings
            else defaults["header_timeout_seconds"].default
        )
        if self.limit_concurrency is None:
            self.limit_concurrency = (
                settings.max_connections if settings else defaults["max_connections"].default
            )
        self._awaiting_head = False
        self._head_bytes = 0  # received while the head is incomplete
        self._parsed_head_bytes = 0  # of the head, as the parser's callbacks report it
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: ProblemError | None = None

    # The head's deadline and size.

    def _expect_head(self) -> None:
        self._awaiting_head = True
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _head_done(self) -> None:
        self._awaiting_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._awaiting_head or self.transport.is_closing():
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing sent at all: nobody to answer
            return
        self._send_problem(
            ProblemError(
                408,
                "Request Timeout",
                f"the request line and headers did not arrive within {self.header_timeout:g} s",
                "request-timeout",
            )
        )

    def _too_large(self, size: str) -> ProblemError:
        return ProblemError(
            431,
            "Request Header Fields Too Large",
            f"the request line and headers are {size}; this server accepts at most "
            f"{self.max_header_bytes} bytes",
            "headers-too-large",
        )

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused already: the rest of what the client sends is not parsed
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refusal is not None:  # raised by a callback below
                self._send_problem(self._refusal)
                return
            log.warning("invalid HTTP request received")
            self.send_400_response("Invalid HTTP request received.")
            return
        if self._awaiting_head:
            # Everything since the head began is head: the parser holds a header it has not
            # finished in its own buffer, so this bounds memory before any callback runs.
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._send_problem(self._too_large(f"over {self.max_header_bytes} bytes"))

    def on_message_begin(self) -> None:
        if not self._awaiting_head:  # the next request on a kept-alive connection
            self._expect_head()
        self._parsed_head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count_head(len(name) + len(value) + 4)  # ": " and CRLF

    def _count_head(self, size: int) -> None:
        # What the parser handed over, counted exactly: a head that arrived in one read.
        self._parsed_head_bytes += size
        if self._parsed_head_bytes > self.max_header_bytes:
            self._refusal = self._too_large(f"{self._parsed_head_bytes} bytes or more")
            raise HeadRefused

    def on_headers_complete(self) -> None:
        self._head_done()
        if self.limit_concurrency is not None and self.url.partition(b"?")[0] == LIVENESS_PATH:
            # /livez answers past the limit: it has no dependencies, and a liveness probe that
            # fails under a flood of connections gets a healthy process restarted. /readyz
            # stays limited: "overloaded, send traffic elsewhere" is what it is for.
            limit, self.limit_concurrency = self.limit_concurrency, None
            try:
                super().on_headers_complete()
            finally:
                self.limit_concurrency = limit
            return
        super().on_headers_complete()

    # Answers written by the protocol itself, before (or instead of) the app.

    def _send_problem(self, problem: ProblemError) -> None:
        self._head_done()
        body = json.dumps(problem.to_dict(), separators=(",", ":")).encode()
        defaults = self.server_state.default_headers  # date, server
        phrase = HTTPStatus(problem.status).phrase
        head = [f"HTTP/1.1 {problem.status} {phrase}\r\n".encode()]
        head += [name + b": " + value + b"\r\n" for name, value in defaults]
        head += [
            f"content-type: {PROBLEM_MEDIA_TYPE}\r\n".encode(),
            f"content-length: {len(body)}\r\n".encode(),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._send_problem(
            ProblemError(
                400,
                "Bad Request",
                "the server cannot parse this HTTP request: a malformed request line or header "
                "(such as a Content-Length that is not a number)",
                "invalid-http",
            )
        )


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

    # FastAPI's own /docs and /redoc load Swagger UI and ReDoc from a CDN, blank on an air-gapped
    # cluster; fastapi-offline serves the same pages with their files from this server.
    app = FastAPIOffline(
        title="edgetune",
        version=_package_version(),
        summary="Hyperparameters at the edge of chaos, measured from short probing runs",
        lifespan=lifespan,
        static_url="/docs-assets",
    )
    app.state.settings = settings
    app.state.database = None  # set by the lifespan

    def sessions() -> Any:
        return app.state.database.sessions if app.state.database is not None else None

    app.state.metrics = metrics.Metrics(sessions, cache_seconds=settings.metrics_cache_seconds)
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
                    # Errors are problem documents, FastAPI's own 422 included.
                    for status, answer in operation.get("responses", {}).items():
                        if status[0] in "45":
                            answer["content"] = {PROBLEM_MEDIA_TYPE: {"schema": problem_ref}}
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override
    return app


def app_from_env() -> FastAPI:
    """Settings from the environment; for `uvicorn --factory app.main:app_from_env` (with
    `--http app.main:ProblemHttpProtocol`)."""
    return create_app(Settings())
