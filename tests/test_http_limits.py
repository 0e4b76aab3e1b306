"""The HTTP server's own limits (F11b), through raw sockets against the real uvicorn server with
app.main.ProblemHttpProtocol: an oversized head is answered 431 and closed, a head that stalls
is cut off at its deadline, idle half-open connections cannot starve /livez, and past the
connection limit requests get 503. Real SQLite behind the app."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx

from app.config import Settings
from tests.helpers import PROBLEM, live_server


@contextmanager
def server(settings: Settings, **limits: object) -> Iterator[tuple[str, tuple[str, int]]]:
    with live_server(settings.model_copy(update=limits)) as url:
        parts = urlsplit(url)
        yield url, (parts.hostname or "", parts.port or 80)


def read_until_closed(conn: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection; and how long that took."""
    started = time.monotonic()
    conn.settimeout(timeout)
    received = b""
    try:
        while chunk := conn.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received, time.monotonic() - started


def test_an_oversized_header_is_refused_with_431(sqlite_settings: Settings) -> None:
    with server(sqlite_settings) as (url, address):
        limit = sqlite_settings.max_header_bytes
        # 64 MB of one header, sent until the server stops reading: refused after ~the limit.
        with socket.create_connection(address, timeout=10) as conn:
            conn.sendall(b"GET /livez HTTP/1.1\r\nHost: api\r\nX-Big: ")
            sent, started = 0, time.monotonic()
            chunk = b"a" * 16384
            try:
                while sent < 64 * 1024 * 1024:
                    conn.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass  # the server closed the connection: what it should do
            reply, _ = read_until_closed(conn, timeout=10)
            took = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
        assert PROBLEM.encode() in reply and b"connection: close" in reply
        assert took < 5, took
        # The kernel's buffers hold some megabytes; the server read no more than the limit and
        # one read past it, and stopped well before 64 MB.
        assert sent < 16 * 1024 * 1024, sent

        # Many headers in one write, each small, together over the limit.
        many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(limit // 100))
        with socket.create_connection(address, timeout=10) as conn:
            conn.sendall(b"GET /livez HTTP/1.1\r\nHost: api\r\n" + many + b"\r\n")
            reply, _ = read_until_closed(conn, timeout=10)
        assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]

        # Under the limit, a large head and a large body are served.
        fits = b"X-Fits: " + b"v" * (limit // 2) + b"\r\n"
        body = b"x" * 300_000
        with socket.create_connection(address, timeout=10) as conn:
            conn.sendall(
                b"POST /livez HTTP/1.1\r\nHost: api\r\nConnection: close\r\n"
                + fits
                + b"Content-Length: %d\r\n\r\n" % len(body)
                + body
            )
            reply, _ = read_until_closed(conn, timeout=10)
        assert reply.startswith(b"HTTP/1.1 405 "), reply[:200]
        assert httpx.get(f"{url}/livez", headers={"X-Fits": "v" * (limit // 2)}).status_code == 200


def test_a_stalled_request_head_is_cut_off_at_its_deadline(sqlite_settings: Settings) -> None:
    deadline = 1.0
    with server(sqlite_settings, header_timeout_seconds=deadline) as (url, address):
        # Half a head, then nothing: 408 and closed at the deadline.
        with socket.create_connection(address) as conn:
            conn.sendall(b"GET /livez HTTP/1.1\r\nHost: api\r\n")
            reply, took = read_until_closed(conn, timeout=deadline + 10)
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
        assert PROBLEM.encode() in reply
        assert deadline * 0.8 < took < deadline + 1.0, took

        # A connection that sends nothing at all: closed at the deadline, no answer.
        with socket.create_connection(address) as conn:
            reply, took = read_until_closed(conn, timeout=deadline + 10)
        assert reply == b"" and took < deadline + 1.0, took

        # A head dripped a byte at a time: the deadline is for the whole head, not per read.
        with socket.create_connection(address) as conn:
            started = time.monotonic()
            try:
                for byte in b"GET /livez HTTP/1.1\r\nHost: api\r\nX-Slow: " + b"s" * 100:
                    conn.sendall(bytes([byte]))
                    time.sleep(0.05)
            except OSError:
                pass
            reply, _ = read_until_closed(conn, timeout=deadline + 10)
            took = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
        assert took < deadline + 1.0, took

        # A kept-alive connection: the deadline runs per request head, not per connection.
        with httpx.Client(base_url=url) as http:
            assert http.get("/livez").status_code == 200
            time.sleep(deadline * 1.5)  # idle, under uvicorn's keep-alive timeout (5 s)
            assert http.get("/livez").status_code == 200


def test_livez_answers_while_200_half_open_connections_are_held(
    sqlite_settings: Settings,
) -> None:
    deadline = 3.0
    with server(sqlite_settings, header_timeout_seconds=deadline) as (url, address):
        held = []
        try:
            for _ in range(200):
                conn = socket.create_connection(address, timeout=10)
                conn.sendall(b"GET /v1/jobs HTTP/1.1\r\nHost: api\r\nX-Half: ")
                held.append(conn)
            opened = time.monotonic()
            took = []
            for _ in range(5):
                started = time.perf_counter()
                assert httpx.get(f"{url}/livez", timeout=5).status_code == 200
                took.append(time.perf_counter() - started)
            assert max(took) < 1.0, took
            # The server lets go of every one of them at the deadline.
            for conn in held:
                remaining = max(0.1, deadline + 2.0 - (time.monotonic() - opened))
                reply, _ = read_until_closed(conn, timeout=remaining)
                assert reply.startswith(b"HTTP/1.1 408 "), reply[:100]
            assert time.monotonic() - opened < deadline + 2.0
        finally:
            for conn in held:
                conn.close()


def test_past_max_connections_requests_get_503(sqlite_settings: Settings) -> None:
    """The connection limit applies in every launch: the protocol takes max_connections from the
    app's settings when uvicorn is given no limit_concurrency (tests.helpers.live_server gives
    none)."""
    with server(sqlite_settings, max_connections=20) as (url, address):
        held = [socket.create_connection(address, timeout=10) for _ in range(25)]
        try:
            time.sleep(0.2)  # the server has accepted them
            assert httpx.get(f"{url}/readyz", timeout=5).status_code == 503
            # Liveness is answered past the limit: the process is alive, only busy.
            assert httpx.get(f"{url}/livez", timeout=5).status_code == 200
        finally:
            for conn in held:
                conn.close()
        deadline = time.monotonic() + 5
        while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the limit did not free up"
            time.sleep(0.1)
