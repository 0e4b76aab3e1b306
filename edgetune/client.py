"""Sync and async clients for the edgetune HTTP API, typed with the service's own schemas.

A spec goes in as a RecommendationSpec, a dict, or the path of a YAML/JSON file; it is validated
here first, so a typo fails before anything is sent. Jobs come back as `JobOut`, probes as
`ProbeList`, the recommendation as `Recommendation`. Every HTTP error is a
`ProblemError` carrying the server's RFC 9457 fields; waiting ends in the recommendation (a typed
`Recommendation`), or in `JobFailed`, `JobCancelled` or `WaitTimeout`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, overload

import httpx
import yaml
from pydantic import ValidationError

from edgetune.measured import MeasuredTrajectories, TrajectoryReport
from edgetune.schemas import (
    TERMINAL_STATUSES,
    JobOut,
    JobPage,
    JobStatus,
    PlotName,
    ProbeList,
    Recommendation,
    RecommendationSpec,
    spec_field,
)

DEFAULT_URL = "http://127.0.0.1:8000"
# Statuses worth polling through while waiting: the server or a proxy is briefly unavailable.
TRANSIENT_STATUSES = (429, 502, 503, 504)
# Longest pause between two polls of a job, whatever the backoff reached or the server asked.
MAX_POLL_SECONDS = 15.0
BACKOFF_FACTOR = 1.5
# Each pause is scaled by a factor in [1 − JITTER, 1 + JITTER], so many pipelines waiting on the
# same server do not poll in lockstep.
JITTER = 0.2

Spec = RecommendationSpec | Mapping[str, Any] | str | os.PathLike[str]
# Called with the job at every poll while waiting (a progress bar, a log line).
OnProgress = Callable[[JobOut], None]


class EdgetuneError(Exception):
    """Base of every error this client raises."""


class Unreachable(EdgetuneError):
    """No HTTP answer at all: connection refused, DNS failure, timeout."""


class ProblemError(EdgetuneError):
    """The server answered with an error: its RFC 9457 problem fields."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        type: str = "about:blank",
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        message = f"HTTP {status} {title}: {detail}"
        for error in errors or []:
            message += f"\n  - {error.get('field', '?')}: {error.get('message', '')}"
        super().__init__(message)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors = errors or []
        self.headers = dict(headers or {})

    @classmethod
    def from_response(cls, response: httpx.Response) -> ProblemError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            # Not a problem document: a proxy's HTML page, say. Keep the start of it.
            text = response.text.strip()[:500] or response.reason_phrase
            return cls(response.status_code, response.reason_phrase, text, headers=response.headers)
        errors = body.get("errors")
        return cls(
            int(body.get("status") or response.status_code),
            str(body.get("title") or response.reason_phrase),
            str(body.get("detail") or ""),
            str(body.get("type") or "about:blank"),
            errors if isinstance(errors, list) else None,
            response.headers,
        )


class InvalidSpec(EdgetuneError, ValueError):
    """The spec failed validation here, before anything was sent. `errors` lists the fields as
    the server's 422 does: [{field, message, type}]."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        lines = [f"  - {e['field']}: {e['message']}" for e in errors]
        super().__init__("invalid spec:\n" + "\n".join(lines))
        self.errors = errors


class JobFailed(EdgetuneError):
    """The job ended `failed`; `error` is the worker's reason."""

    def __init__(self, job: JobOut) -> None:
        super().__init__(f"job {job.id} failed: {job.error or 'no reason recorded'}")
        self.job = job
        self.error = job.error


class JobCancelled(EdgetuneError):
    def __init__(self, job: JobOut) -> None:
        super().__init__(f"job {job.id} was cancelled")
        self.job = job


class WaitTimeout(EdgetuneError, TimeoutError):
    """The job had not finished within the timeout; it goes on running on the server."""

    def __init__(self, job: JobOut, timeout: float) -> None:
        progress = job.progress
        super().__init__(
            f"job {job.id} still {job.status} after {timeout:g} s ({progress.phase}, "
            f"{progress.fraction:.0%}); it keeps running: wait again or cancel it"
        )
        self.job = job
        self.timeout = timeout


def load_spec(spec: Spec) -> RecommendationSpec:
    """A validated spec from a spec object, a mapping, or a YAML/JSON file path; InvalidSpec
    when it is not one (OSError when the file cannot be read)."""
    if isinstance(spec, RecommendationSpec):
        return spec
    if isinstance(spec, Mapping):
        data: Any = dict(spec)
    else:
        path = Path(spec)
        text = path.read_text()
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise InvalidSpec([{"field": "body", "message": str(exc), "type": "parse"}]) from exc
    try:
        return RecommendationSpec.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"field": spec_field(e["loc"]), "message": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        raise InvalidSpec(errors) from exc


def _body(spec: Spec, check: bool) -> Any:
    if not check and isinstance(spec, Mapping):
        return dict(spec)
    return load_spec(spec).model_dump(mode="json")


def _version() -> str:
    try:
        return version("edgetune")
    except PackageNotFoundError:
        return "0+unknown"


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": f"edgetune-client/{_version()}", "Accept": "application/json"}
    key = api_key if api_key is not None else os.environ.get("EDGETUNE_API_KEY")
    if key:
        headers["X-API-Key"] = key
    return headers


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise ProblemError.from_response(response)
    return response


def _finished(job: JobOut) -> JobOut:
    """The job if it succeeded; its failure or cancellation as an exception."""
    if job.status == "failed":
        raise JobFailed(job)
    if job.status == "cancelled":
        raise JobCancelled(job)
    return job


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Backoff:
    """Pauses between polls: start at `poll`, grow ×1.5 up to 15 s, jittered ±20 %, never
    shorter than a Retry-After the server sent, never past the deadline."""

    def __init__(
        self, poll: float, deadline: float | None, longest: float = MAX_POLL_SECONDS
    ) -> None:
        self.delay = poll
        self.deadline = deadline
        self.longest = longest

    def next(self, server_hint: float | None) -> float:
        pause = self.delay * random.uniform(1 - JITTER, 1 + JITTER)
        if server_hint is not None:
            pause = max(pause, server_hint)
        pause = min(pause, self.longest)
        self.delay = min(self.delay * BACKOFF_FACTOR, self.longest)
        if self.deadline is not None:
            pause = min(pause, max(0.0, self.deadline - time.monotonic()))
        return pause

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _transient(exc: EdgetuneError) -> bool:
    """Worth polling through: the server is unreachable for a moment, or says to come back."""
    if isinstance(exc, Unreachable):
        return True
    return isinstance(exc, ProblemError) and exc.status in TRANSIENT_STATUSES


def _hint(exc: EdgetuneError) -> float | None:
    return retry_after(exc.headers) if isinstance(exc, ProblemError) else None


def _list_params(
    status: JobStatus | str | None, page_size: int | None, token: str | None
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if status is not None:
        params["status"] = status
    if page_size is not None:
        params["page_size"] = page_size
    if token:
        params["page_token"] = token
    return params


def _plot_path(job_id: str, name: str, format: str) -> str:
    return f"/v1/jobs/{job_id}/plots/{name}?format={format}"


class Client:
    """The edgetune API over HTTP. `url` defaults to EDGETUNE_URL, else http://127.0.0.1:8000;
    `api_key` to EDGETUNE_API_KEY (sent as X-API-Key; the embedded loopback server needs none).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("EDGETUNE_URL") or DEFAULT_URL).rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the edgetune server at {self.url}: {exc}") from exc
        return _checked(response)

    def submit(
        self, spec: Spec, idempotency_key: str | None = None, *, check: bool = True
    ) -> JobOut:
        """Queue a job; the same `idempotency_key` with the same spec returns the same job.
        check=False sends a mapping as it is and leaves validation to the server (whose
        version may be newer than this client's)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = _body(spec, check)
        response = self._request("POST", "/v1/recommendations", json=body, headers=headers)
        return JobOut.model_validate(response.json())

    def job(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self._request("GET", f"/v1/jobs/{job_id}").json())

    def jobs(
        self, status: JobStatus | str | None = None, page_size: int | None = None
    ) -> Iterator[JobOut]:
        """Every job, newest first, fetching pages of `page_size` as the iteration goes."""
        token: str | None = None
        while True:
            params = _list_params(status, page_size, token)
            page = self._request("GET", "/v1/jobs", params=params).json()
            for job in page["jobs"]:
                yield JobOut.model_validate(job)
            token = page.get("next_page_token")
            if not token:
                return

    def page(
        self,
        status: JobStatus | str | None = None,
        page_size: int | None = None,
        page_token: str | None = None,
    ) -> JobPage:
        """One page of jobs, newest first; pass its next_page_token for the next one."""
        params = _list_params(status, page_size, page_token)
        return JobPage.model_validate(self._request("GET", "/v1/jobs", params=params).json())

    def cancel(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def recommendation(self, job_id: str) -> Recommendation:
        response = self._request("GET", f"/v1/jobs/{job_id}/recommendation")
        return Recommendation.model_validate(response.json())

    def probes(self, job_id: str) -> ProbeList:
        return ProbeList.model_validate(self._request("GET", f"/v1/jobs/{job_id}/probes").json())

    def report_trajectory(self, job_id: str, report: TrajectoryReport) -> MeasuredTrajectories:
        """Store points of a real training run on the job (edgetune.monitor sends them); a point
        sent again (same run and step) replaces itself, so a retry is safe."""
        body = report.model_dump(mode="json")
        response = self._request("POST", f"/v1/jobs/{job_id}/trajectory", json=body)
        return MeasuredTrajectories.model_validate(response.json())

    def trajectory(self, job_id: str) -> MeasuredTrajectories:
        """Every run's measured trajectory reported for the job."""
        response = self._request("GET", f"/v1/jobs/{job_id}/trajectory")
        return MeasuredTrajectories.model_validate(response.json())

    def plot(self, job_id: str, name: PlotName, format: Literal["png", "svg"] = "png") -> bytes:
        """One of the job's plots (order, collapse, growth, trajectory) as PNG or SVG bytes."""
        return self._request("GET", _plot_path(job_id, name, format)).content

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll: float = 1.0,
        *,
        on_progress: OnProgress | None = None,
        max_poll: float = MAX_POLL_SECONDS,
    ) -> JobOut:
        """Poll until the job ends: the succeeded job, else JobFailed / JobCancelled /
        WaitTimeout. Polls back off exponentially up to `max_poll` s (with jitter) and honour
        Retry-After; brief outages (connection errors, 429, 502–504) are polled through.
        `on_progress(job)` is called with every polled state, the last one included."""
        backoff = Backoff(poll, _deadline(timeout), max_poll)
        while True:
            try:
                response = self._request("GET", f"/v1/jobs/{job_id}")
            except EdgetuneError as exc:
                if not _transient(exc) or backoff.expired():
                    raise
                time.sleep(backoff.next(_hint(exc)))
                continue
            job = JobOut.model_validate(response.json())
            if on_progress is not None:
                on_progress(job)
            if job.status in TERMINAL_STATUSES:
                return _finished(job)
            if backoff.expired():
                raise WaitTimeout(job, timeout or 0.0)
            time.sleep(backoff.next(retry_after(response.headers)))

    @overload
    def recommend(
        self,
        spec: Spec,
        wait: Literal[True] = True,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Recommendation: ...

    @overload
    def recommend(
        self,
        spec: Spec,
        wait: Literal[False],
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> JobOut: ...

    def recommend(
        self,
        spec: Spec,
        wait: bool = True,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Recommendation | JobOut:
        """Submit the spec and (by default) wait for its recommendation; wait=False returns the
        queued job."""
        job = self.submit(spec, idempotency_key=idempotency_key)
        if not wait:
            return job
        self.wait(job.id, timeout=timeout)
        return self.recommendation(job.id)


class AsyncClient:
    """The same API as `Client`, for asyncio code: every method is a coroutine, `jobs` an async
    iterator."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("EDGETUNE_URL") or DEFAULT_URL).rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the edgetune server at {self.url}: {exc}") from exc
        return _checked(response)

    async def submit(
        self, spec: Spec, idempotency_key: str | None = None, *, check: bool = True
    ) -> JobOut:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = _body(spec, check)
        response = await self._request("POST", "/v1/recommendations", json=body, headers=headers)
        return JobOut.model_validate(response.json())

    async def job(self, job_id: str) -> JobOut:
        return JobOut.model_validate((await self._request("GET", f"/v1/jobs/{job_id}")).json())

    async def jobs(
        self, status: JobStatus | str | None = None, page_size: int | None = None
    ) -> AsyncIterator[JobOut]:
        token: str | None = None
        while True:
            params = _list_params(status, page_size, token)
            page = (await self._request("GET", "/v1/jobs", params=params)).json()
            for job in page["jobs"]:
                yield JobOut.model_validate(job)
            token = page.get("next_page_token")
            if not token:
                return

    async def cancel(self, job_id: str) -> JobOut:
        response = await self._request("POST", f"/v1/jobs/{job_id}/cancel")
        return JobOut.model_validate(response.json())

    async def recommendation(self, job_id: str) -> Recommendation:
        response = await self._request("GET", f"/v1/jobs/{job_id}/recommendation")
        return Recommendation.model_validate(response.json())

    async def probes(self, job_id: str) -> ProbeList:
        response = await self._request("GET", f"/v1/jobs/{job_id}/probes")
        return ProbeList.model_validate(response.json())

    async def report_trajectory(
        self, job_id: str, report: TrajectoryReport
    ) -> MeasuredTrajectories:
        body = report.model_dump(mode="json")
        response = await self._request("POST", f"/v1/jobs/{job_id}/trajectory", json=body)
        return MeasuredTrajectories.model_validate(response.json())

    async def trajectory(self, job_id: str) -> MeasuredTrajectories:
        response = await self._request("GET", f"/v1/jobs/{job_id}/trajectory")
        return MeasuredTrajectories.model_validate(response.json())

    async def plot(
        self, job_id: str, name: PlotName, format: Literal["png", "svg"] = "png"
    ) -> bytes:
        return (await self._request("GET", _plot_path(job_id, name, format))).content

    async def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll: float = 1.0,
        *,
        on_progress: OnProgress | None = None,
        max_poll: float = MAX_POLL_SECONDS,
    ) -> JobOut:
        backoff = Backoff(poll, _deadline(timeout), max_poll)
        while True:
            try:
                response = await self._request("GET", f"/v1/jobs/{job_id}")
            except EdgetuneError as exc:
                if not _transient(exc) or backoff.expired():
                    raise
                await asyncio.sleep(backoff.next(_hint(exc)))
                continue
            job = JobOut.model_validate(response.json())
            if on_progress is not None:
                on_progress(job)
            if job.status in TERMINAL_STATUSES:
                return _finished(job)
            if backoff.expired():
                raise WaitTimeout(job, timeout or 0.0)
            await asyncio.sleep(backoff.next(retry_after(response.headers)))

    @overload
    async def recommend(
        self,
        spec: Spec,
        wait: Literal[True] = True,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Recommendation: ...

    @overload
    async def recommend(
        self,
        spec: Spec,
        wait: Literal[False],
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> JobOut: ...

    async def recommend(
        self,
        spec: Spec,
        wait: bool = True,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Recommendation | JobOut:
        job = await self.submit(spec, idempotency_key=idempotency_key)
        if not wait:
            return job
        await self.wait(job.id, timeout=timeout)
        return await self.recommendation(job.id)
