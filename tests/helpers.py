"""Helpers and constants that several test modules use: a small spec, a live server, API keys and
the problem+json check. The shared fixtures are in tests/conftest.py, the database helpers in
tests/db.py.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from app.auth import create_key
from app.config import Settings
from app.db import make_engine, session_factory
from app.main import ProblemHttpProtocol, create_app

PROBLEM = "application/problem+json"
# A job the worker finishes in a few seconds on a CPU with a recommendation (not a "cannot tell"):
# 512 Gaussian-mixture points, one hidden layer of 32, a 5-epoch budget, probes worth one run.
SMALL_SPEC = {
    "model": {"type": "mlp", "hidden": [32]},
    "dataset": {"name": "synthetic", "synthetic_samples": 512, "synthetic_features": 16},
    "budget": {"epochs": 5, "probe_fraction": 1.0},
}


@contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    """Serve create_app(settings) with uvicorn in a thread on a free port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings), log_level="warning", lifespan="on", http=ProblemHttpProtocol
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def new_key(settings: Settings, tenant: str) -> str:
    engine = make_engine(settings)
    try:
        with session_factory(engine)() as session:
            return create_key(session, tenant=tenant, name="test").key
    finally:
        engine.dispose()


def api_key(settings: Settings, tenant: str = "default") -> dict[str, str]:
    """Headers with a new API key of `tenant`, made by the real admin function (`keys create`)."""
    engine = make_engine(settings)
    try:
        with session_factory(engine)() as session:
            created = create_key(session, tenant=tenant, name="tests")
    finally:
        engine.dispose()
    return {"X-API-Key": created.key}


def assert_problem(response: httpx.Response, status: int, *, detail: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["type"] and body["title"]
    assert detail.lower() in body["detail"].lower(), body
    assert "Traceback" not in response.text
    return body
