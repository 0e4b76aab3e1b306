"""Webhooks end to end: a real receiver (http.server on 127.0.0.1 in a thread) gets the signed
event of a job, checks the signature with its own HMAC code written from the Standard Webhooks
spec, and sees retries with backoff; private destinations are refused. Real SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app import queue, webhooks
from app.auth import create_key, webhook_secret
from app.config import Settings
from app.db import make_engine, session_factory
from app.models import WebhookDelivery
from tests.helpers import SMALL_SPEC, assert_problem, live_server

TENANT = "hooks"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """Answers each POST with the next status of `statuses` (then 200), recording each one."""

    url: str
    statuses: list[int]
    received: list[Received] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="", statuses=[])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append(
                Received({k.lower(): v for k, v in self.headers.items()}, body, time.time())
            )
            self.send_response(state.statuses.pop(0) if state.statuses else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield state
    server.shutdown()
    server.server_close()


def verify(secret: str, received: Received, tolerance: float = 300) -> dict[str, Any]:
    """The receiver's own check, from the spec: HMAC-SHA256 over "{id}.{timestamp}.{body}" with
    the base64-decoded secret; the header holds space-separated "v1,<base64>" signatures."""
    msg_id = received.headers["webhook-id"]
    timestamp = received.headers["webhook-timestamp"]
    assert abs(time.time() - int(timestamp)) < tolerance, "stale or future timestamp"
    key = base64.b64decode(secret.split("_", 1)[1])
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + received.body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    signatures = [
        s.split(",", 1)[1] for s in received.headers["webhook-signature"].split(" ") if "," in s
    ]
    assert any(hmac.compare_digest(expected, s) for s in signatures), "bad signature"
    payload: dict[str, Any] = json.loads(received.body)
    return payload


def test_sign_matches_the_standard_webhooks_test_vector() -> None:
    signature = webhooks.sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def hook_settings(settings: Settings, tmp_path: Path, **update: Any) -> Settings:
    return settings.model_copy(
        update={"data_root": str(tmp_path), "webhook_allow_private": True, **update}
    )


def deliveries(settings: Settings) -> list[WebhookDelivery]:
    engine = make_engine(settings)
    with session_factory(engine)() as session:
        rows = list(session.scalars(select(WebhookDelivery)).all())
    engine.dispose()
    return rows


def test_a_finished_job_sends_a_signed_webhook(
    db_settings: Settings, tmp_path: Path, receiver: Receiver
) -> None:
    from worker.main import run_worker  # torch: only the worker side imports it

    settings = hook_settings(db_settings, tmp_path)
    engine = make_engine(settings)
    with session_factory(engine)() as session:
        key = create_key(session, tenant=TENANT).key
        secret = webhook_secret(session, tenant=TENANT)
    engine.dispose()
    with (
        live_server(settings) as url,
        httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=30) as http,
    ):
        # A name, not an address: resolved, then connected to by address with the name as Host.
        named = receiver.url.replace("127.0.0.1", "localhost")
        job = http.post("/v1/recommendations", json={**SMALL_SPEC, "callback_url": named}).json()
        # The real worker: runs the job, then sends the due webhooks before it returns.
        run_worker(settings, device="cpu", once=True)
        assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"

    assert len(receiver.received) == 1
    payload = verify(secret, receiver.received[0])
    assert receiver.received[0].headers["host"] == named.split("/")[2]
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["job_id"] == job["id"] and payload["data"]["status"] == "succeeded"
    assert payload["data"]["links"]["recommendation"] == f"/v1/jobs/{job['id']}/recommendation"
    [row] = deliveries(settings)
    assert row.id == receiver.received[0].headers["webhook-id"]
    assert row.status == "delivered" and row.attempts == 1 and row.last_status_code == 200
    assert row.tenant == TENANT and row.delivered_at is not None and len(row.history) == 1


def test_failed_deliveries_are_retried_with_backoff(
    db_settings: Settings, tmp_path: Path, receiver: Receiver
) -> None:
    settings = hook_settings(db_settings, tmp_path, webhook_backoff_seconds=0.5)
    receiver.statuses = [500, 503]
    engine = make_engine(settings)
    sessions = session_factory(engine)
    with sessions() as session:
        key = create_key(session, tenant=TENANT).key
        secret = webhook_secret(session, tenant=TENANT)
    with (
        live_server(settings) as url,
        httpx.Client(base_url=url, headers={"X-API-Key": key}) as http,
    ):
        spec = {**SMALL_SPEC, "callback_url": receiver.url}
        job_id = http.post("/v1/recommendations", json=spec).json()["id"]
        # Cancelling a queued job ends it in the API: the API queues the webhook.
        assert http.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"

    waits = []
    for _ in range(3):
        [row] = deliveries(settings)
        waits.append(max(0.0, (row.next_attempt_at - webhooks.utcnow()).total_seconds()))
        time.sleep(waits[-1])
        assert webhooks.deliver_due(sessions, settings) == 1
        assert webhooks.deliver_due(sessions, settings) == 0  # the next attempt is not due yet
    engine.dispose()

    assert len(receiver.received) == 3
    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert len(ids) == 1  # the same id on every retry: receivers can drop duplicates
    for received in receiver.received:
        assert verify(secret, received)["type"] == "job.cancelled"
    gaps = [b.at - a.at for a, b in zip(receiver.received, receiver.received[1:], strict=False)]
    assert gaps[0] >= 0.5 * 0.9 and gaps[1] >= 1.0 * 0.9, gaps  # 0.5 s, then doubled
    [row] = deliveries(settings)
    assert row.status == "delivered" and row.attempts == 3 and row.last_status_code == 200
    assert [h["status_code"] for h in row.history] == [500, 503, 200]
    assert row.history[0]["error"] == "HTTP 500"


def test_delivery_gives_up_after_max_attempts(db_settings: Settings, receiver: Receiver) -> None:
    settings = db_settings.model_copy(
        update={
            "webhook_allow_private": True,
            "webhook_backoff_seconds": 0,
            "webhook_max_attempts": 2,
        }
    )
    receiver.statuses = [500, 500, 500]
    engine = make_engine(settings)
    sessions = session_factory(engine)
    with sessions() as session:
        job, _ = queue.create_job(
            session, spec={**SMALL_SPEC, "callback_url": receiver.url}, tenant=TENANT
        )
        queue.request_cancel(session, job.id, TENANT)
    assert webhooks.deliver_due(sessions, settings) == 1
    assert webhooks.deliver_due(sessions, settings) == 1
    assert webhooks.deliver_due(sessions, settings) == 0
    engine.dispose()
    [row] = deliveries(settings)
    assert row.status == "failed" and row.attempts == 2 and len(receiver.received) == 2


def test_private_destinations_are_refused(
    db_settings: Settings, tmp_path: Path, receiver: Receiver
) -> None:
    settings = db_settings.model_copy(update={"data_root": str(tmp_path)})
    assert not settings.webhook_allow_private
    engine = make_engine(settings)
    sessions = session_factory(engine)
    with sessions() as session:
        key = create_key(session, tenant=TENANT).key
    with (
        live_server(settings) as url,
        httpx.Client(base_url=url, headers={"X-API-Key": key}) as http,
    ):
        for private in (
            receiver.url,
            "http://10.1.2.3/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:8080/",
            "http://localhost:9000/",
            "https://[::ffff:192.168.0.1]/",
        ):
            response = http.post(
                "/v1/recommendations", json={**SMALL_SPEC, "callback_url": private}
            )
            body = assert_problem(response, 422, detail="callback_url")
            assert body["errors"][0]["field"] == "callback_url", private
        assert http.get("/v1/jobs").json()["jobs"] == []  # nothing was queued
        public = http.post(
            "/v1/recommendations", json={**SMALL_SPEC, "callback_url": "https://example.com/h"}
        )
        assert public.status_code == 202

    # A private URL that reached the queue anyway (a name, or an older server) is refused when
    # sent: recorded as failed with the reason, never retried, nothing reaches the receiver.
    with sessions() as session:
        job, _ = queue.create_job(
            session, spec={**SMALL_SPEC, "callback_url": receiver.url}, tenant=TENANT
        )
        queue.request_cancel(session, job.id, TENANT)
    assert webhooks.deliver_due(sessions, settings) == 1
    engine.dispose()
    [row] = [d for d in deliveries(settings) if d.job_id == job.id]
    assert row.status == "failed" and row.attempts == 1 and row.last_status_code is None
    assert row.last_error and "loopback" in row.last_error and "refused" in row.last_error
    assert receiver.received == []


@dataclass
class DripReceiver:
    """A raw-socket receiver that reads the request, then drips its response one byte at a time
    (F10: a per-read timeout never fires while bytes keep coming)."""

    url: str
    every: float
    # Dripping stops after this long (the rest is sent at once), so the test without a deadline
    # ends, late, instead of hanging.
    give_up_after: float
    closed_after: list[float] = field(default_factory=list)


@pytest.fixture
def drip_receiver() -> Iterator[DripReceiver]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    state = DripReceiver(
        url=f"http://127.0.0.1:{listener.getsockname()[1]}/hook", every=0.2, give_up_after=15.0
    )
    stopping = threading.Event()

    def drip(conn: socket.socket) -> None:
        started = time.monotonic()
        response = b"HTTP/1.1 200 OK\r\n" + b"x-padding: " + b"." * 10_000 + b"\r\n"
        response += b"content-length: 0\r\n\r\n"
        try:
            conn.recv(65536)  # the request (small: one read)
            for i in range(len(response)):
                if stopping.is_set() or time.monotonic() - started > state.give_up_after:
                    conn.sendall(response[i:])
                    break
                conn.sendall(response[i : i + 1])
                time.sleep(state.every)
            conn.recv(1)  # until the client closes
        except OSError:
            pass  # the client closed the connection: what the deadline does
        finally:
            state.closed_after.append(time.monotonic() - started)
            conn.close()

    def serve() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield state
    stopping.set()
    thread.join(timeout=5)
    listener.close()


def test_a_dripping_receiver_is_cut_off_at_the_delivery_deadline(
    db_settings: Settings, drip_receiver: DripReceiver
) -> None:
    """F10: each attempt has one overall deadline (connect + send + the response), not a timeout
    per read; the attempt that hits it is recorded as failed and retried with backoff."""
    deadline = 1.5
    settings = db_settings.model_copy(
        update={
            "webhook_allow_private": True,
            "webhook_timeout_seconds": deadline,
            "webhook_backoff_seconds": 60,
        }
    )
    engine = make_engine(settings)
    sessions = session_factory(engine)
    with sessions() as session:
        job, _ = queue.create_job(
            session, spec={**SMALL_SPEC, "callback_url": drip_receiver.url}, tenant=TENANT
        )
        queue.request_cancel(session, job.id, TENANT)
    started = time.monotonic()
    assert webhooks.deliver_due(sessions, settings) == 1
    took = time.monotonic() - started
    engine.dispose()
    assert took < deadline + 1.0, f"the attempt took {took:.1f} s; its deadline is {deadline} s"
    [row] = deliveries(settings)
    assert row.status == "pending" and row.attempts == 1  # failed, to be retried
    assert row.last_status_code is None and "deadline" in (row.last_error or ""), row.last_error
    [entry] = row.history
    assert entry["status_code"] is None and entry["seconds"] < deadline + 1.0
    wait = (row.next_attempt_at - webhooks.utcnow()).total_seconds()
    assert 55 < wait <= 60  # the usual backoff: webhook_backoff_seconds after the first failure
    # The receiver saw its connection closed at the deadline, not after its response.
    for _ in range(50):
        if drip_receiver.closed_after:
            break
        time.sleep(0.1)
    assert drip_receiver.closed_after and drip_receiver.closed_after[0] < deadline + 1.0
