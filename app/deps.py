"""What the endpoints depend on, each with its `Annotated` alias for a route's signature: the
settings, the database, who is calling (X-API-Key → tenant) and the spec in the request body.

SQLAlchemy sessions are synchronous: every database call goes through `Database.run`, which runs
it in a worker thread, so the event loop never waits on the database.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar

import anyio
import anyio.to_thread
import yaml
from fastapi import Depends, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from app import auth
from app.config import Settings, is_loopback_host
from app.errors import ProblemError
from app.schemas import RecommendationSpec

JSON_MEDIA_TYPES = ("application/json",)
YAML_MEDIA_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
# Safe loading only (no Python tags); libyaml's parser when PyYAML was built with it.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlLoader(SAFE_LOADER):  # type: ignore[misc,valid-type]  # a base chosen at import
    """PyYAML's safe loader, refusing a repeated key as YAML itself does (PyYAML keeps the last
    value). Keys merged in with `<<` may still be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool | None):
                continue  # a sequence or mapping as a key: the base class refuses it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping

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

    async def run_as(self, caller: Caller, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """`fn(session, tenant=..., **kwargs)` for the caller's tenant, checking its API key in
        the same session: one thread hop and one pooled connection per request, not two."""

        def call() -> T:
            with self.sessions() as session:
                result = fn(session, tenant=caller.resolve(session), **kwargs)
                # Most service functions commit; this ends the transaction where one did not.
                session.commit()
                return result

        return await anyio.to_thread.run_sync(call, limiter=self.limiter)


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a tenant known without the database (auth off on loopback), or an
    API key still to be checked by the endpoint's database call (`Database.run_as`)."""

    tenant: str | None = None
    key: str | None = None

    def resolve(self, session: Session) -> str:
        if self.tenant is not None:
            return self.tenant
        tenant = auth.tenant_for_key(session, self.key or "")
        if tenant is None:
            raise auth.unauthorized(f"the {auth.HEADER} is not a valid, unrevoked key")
        return tenant


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


DatabaseDep = Annotated[Database, Depends(get_database)]

# Declares the apiKey security scheme in the OpenAPI document; get_caller and Caller.resolve do
# the checking (auto_error=False: a missing key is our 401 problem, not FastAPI's 403).
api_key_header = APIKeyHeader(name=auth.HEADER, auto_error=False, scheme_name="ApiKey")


async def get_caller(
    request: Request, key: Annotated[str | None, Security(api_key_header)]
) -> Caller:
    """Who is asking: every job read and write is scoped by the tenant of the X-API-Key."""
    settings: Settings = request.app.state.settings
    if settings.auth == "disabled":
        # Off only for this machine: behind `uvicorn --host 0.0.0.0` or a published container
        # port (which the settings cannot see), requests from elsewhere still need a key.
        if request.client is None or not is_loopback_host(request.client.host):
            raise auth.unauthorized(
                "auth is off on this server for requests from this machine only; run it with "
                "EDGETUNE_HOST set to the address it serves on, and send an API key"
            )
        return Caller(tenant=auth.DEFAULT_TENANT)
    if not key:
        raise auth.unauthorized(f"send an API key in the {auth.HEADER} header")
    return Caller(key=key)


CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_tenant(request: Request, caller: CallerDep) -> str:
    """The caller's tenant, checked now: for endpoints that must refuse a bad key before they
    read the body."""
    if caller.tenant is not None:
        return caller.tenant
    database: Database = request.app.state.database
    return await database.run_as(caller, _checked_tenant)


def _checked_tenant(session: Session, *, tenant: str) -> str:
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259) does not, and neither do we.
    raise ValueError(f"{name} is not valid JSON")


class _RepeatedKeys(dict[str, Any]):
    """A JSON object in which some keys (`repeated`) appeared more than once."""

    repeated: list[str]


def _load_json(raw: bytes) -> Any:
    """The body as JSON. A repeated key is a 422 naming it: json.loads would silently keep the
    last value, where another parser (a proxy, a client's own check) may keep the first."""
    marked = False

    def as_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal marked
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        marked = True
        repeated = _RepeatedKeys(obj)
        repeated.repeated = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        return repeated

    data = json.loads(raw, parse_constant=_reject_constant, object_pairs_hook=as_object)
    if not marked:
        return data
    errors: list[dict[str, Any]] = []
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while stack:  # a loop, not recursion: the body may be nested as deeply as json.loads allows
        loc, value = stack.pop()
        if isinstance(value, _RepeatedKeys):
            errors += [
                {"type": "duplicate_key", "loc": ("body", *loc, key), "msg": "given more than once"}
                for key in value.repeated
            ]
        children = value.items() if isinstance(value, dict) else enumerate(value)
        stack += [((*loc, k), v) for k, v in children if isinstance(v, dict | list)]
    raise RequestValidationError(sorted(errors, key=lambda e: str(e["loc"])))


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
            data = await anyio.to_thread.run_sync(yaml.load, raw, YamlLoader)
        else:
            data = _load_json(raw)
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


SpecDep = Annotated[RecommendationSpec, Depends(get_spec)]
