"""edgetune's Python client: the import path pipelines use.

    from edgetune import Client

    with Client("http://127.0.0.1:8000") as edgetune:
        result = edgetune.recommend("examples/digits_small.yaml", timeout=600)

Importing this package never imports torch or the worker: a pipeline needs only httpx, pydantic
and PyYAML to ask for hyperparameters.
"""

from edgetune.client import (
    AsyncClient,
    Client,
    EdgetuneError,
    InvalidSpec,
    JobCancelled,
    JobFailed,
    ProblemError,
    Unreachable,
    WaitTimeout,
)

__all__ = [
    "AsyncClient",
    "Client",
    "EdgetuneError",
    "InvalidSpec",
    "JobCancelled",
    "JobFailed",
    "ProblemError",
    "Unreachable",
    "WaitTimeout",
]
