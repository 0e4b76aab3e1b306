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
