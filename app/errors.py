"""The API's one error type: an RFC 9457 problem (application/problem+json).

Service code raises ProblemError; app/main.py turns it, and every framework error (unknown route,
wrong method, validation, anything unexpected), into the same problem document.
"""

from __future__ import annotations

from typing import Any

PROBLEM_MEDIA_TYPE = "application/problem+json"
# Problem types are URI references; relative ones resolve against the API's own base URL.
PROBLEM_BASE = "/problems/"
# Seconds a client should wait before retrying while the database does not answer (a restart or
# a failover takes about this long).
DATABASE_RETRY_AFTER_SECONDS = 5


# Every problem type the API sends, with what it means: GET /problems/{type} serves these, so a
# type URI in a response resolves to its explanation (tests/test_api.py checks none is missing).
PROBLEM_TYPES: dict[str, str] = {
    "validation-failed": "The request's fields are invalid; `errors` names each field and why.",
    "spec-rejected": "The spec is valid but too big for this server's limits, or could not run "
    "(data missing, a model that cannot be built on this data); `errors` names the field.",
    "plugin-unknown": "The spec names a model or dataset plugin that no worker has advertised; "
    "`errors` names the field and lists the plugins the workers have.",
    "invalid-body": "The body is not valid JSON or YAML, or repeats a key.",
    "empty-body": "The request needs a body (the spec, as JSON or YAML).",
    "unsupported-media-type": "Send the spec as application/json or application/yaml.",
    "body-too-large": "The body is over this server's size limit (EDGETUNE_MAX_BODY_BYTES).",
    "headers-too-large": "The request head is over EDGETUNE_MAX_HEADER_BYTES.",
    "request-timeout": "The request head did not arrive within EDGETUNE_HEADER_TIMEOUT_SECONDS.",
    "invalid-http": "The request is not valid HTTP (e.g. a malformed Content-Length).",
    "invalid-header": "A header's value is not valid.",
    "unauthorized": "Send a valid, unrevoked API key in the X-API-Key header.",
    "job-not-found": "There is no such job for this API key's tenant.",
    "ambiguous-job-id": "Several jobs start with the id given: give more of it.",
    "job-finished": "The job has already ended; it cannot be cancelled.",
    "recommendation-not-ready": "The job has not succeeded (yet): poll GET /v1/jobs/{id}.",
    "recommendation-lost": "The job succeeded but its stored result is missing.",
    "plot-not-found": "Plots are order, collapse, growth and trajectory (PNG or SVG).",
    "plot-not-ready": "The job has not produced the data this plot needs yet.",
    "invalid-format": "Plot formats are png and svg, given once.",
    "invalid-page-token": "page_token must be a next_page_token this server returned.",
    "idempotency-key-reused": "This Idempotency-Key was used with a different body.",
    "callback-url-refused": "The callback_url points at a private, loopback or link-local "
    "address (EDGETUNE_WEBHOOK_ALLOW_PRIVATE lifts this).",
    "database-unavailable": "The database is unreachable for a moment: retry after Retry-After.",
    "not-found": "There is no resource at this path.",
    "method-not-allowed": "This path does not take this method; the Allow header lists those it "
    "takes.",
    "internal-error": "An unexpected error; the server's log has the details.",
}


class ProblemError(Exception):
    """An error the client can act on: HTTP status, short title, specific detail.

    `type` is a short slug (e.g. "job-not-found") made into a URI reference under /problems/;
    `errors` lists field-level problems ({field, message, type}) for 422s.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        type: str = "about:blank",
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type if type == "about:blank" or ":" in type else PROBLEM_BASE + type
        self.errors = errors
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def database_unavailable(exc: Exception) -> ProblemError:
    """503 with Retry-After: the database is down or unreachable (readyz, and any request whose
    query fails to connect: app/main.py). The driver's message stays in the server log."""
    return ProblemError(
        503,
        "Database unavailable",
        f"the database does not answer ({type(exc).__name__}); retry in "
        f"{DATABASE_RETRY_AFTER_SECONDS} s",
        "database-unavailable",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )
