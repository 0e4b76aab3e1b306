"""The API's one error type: an RFC 9457 problem (application/problem+json).

Service code raises ProblemError; app/main.py turns it, and every framework error (unknown route,
wrong method, validation, anything unexpected), into the same problem document.
"""

from __future__ import annotations

from typing import Any

PROBLEM_MEDIA_TYPE = "application/problem+json"
# Problem types are URI references; relative ones resolve against the API's own base URL.
PROBLEM_BASE = "/problems/"


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
