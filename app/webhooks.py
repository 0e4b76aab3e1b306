"""Webhooks: a job with a `callback_url` tells it when it ends, signed per Standard Webhooks.

Outbox: the delivery row is inserted by the same transaction that ends the job (app.queue calls
`enqueue`), so an ended job always has its delivery, whatever crashes afterwards. Workers send
due deliveries between jobs (`deliver_due`); each attempt is claimed by a guarded UPDATE (one
sender per attempt on any database), recorded, and retried with exponential backoff until
`webhook_max_attempts`. Delivery is at least once: receivers drop repeats by `webhook-id`.
Each attempt has one overall deadline, `webhook_timeout_seconds`, from resolving the host to the
response's status line and headers: a receiver that answers one byte at a time is cut off there
(a per-read timeout alone never fires while bytes keep coming), so one pass of `deliver_due`
takes at most `limit` deadlines.

Signature (https://www.standardwebhooks.com): headers `webhook-id` (the delivery id, the same on
every retry), `webhook-timestamp` (unix seconds of this attempt) and `webhook-signature` =
"v1," + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")), where key is the base64-decoded
part of the tenant's "whsec_..." secret.

Outbound requests go only to global addresses unless `webhook_allow_private`: the host is
resolved, every address checked, and the request connects to the checked address (the URL's
host stays in the Host header and TLS SNI), so a DNS answer that changes between the check and
the connection (rebinding) cannot redirect it. Redirects are not followed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.to_thread
import httpx
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from app import auth
from app.config import Settings
from app.errors import ProblemError
from app.models import WebhookDelivery, utcnow

logger = logging.getLogger("edgetune.webhooks")

# Deliveries one `deliver_due` call sends at most (the worker goes back to its queue after).
DELIVERIES_PER_PASS = 20
# A claimed attempt is not retried by another sender before its timeout plus this margin.
CLAIM_MARGIN_SECONDS = 30.0
# Error texts and history entries are kept short; a receiver's error page is not our log.
MAX_ERROR_CHARS = 500


class RefusedAddress(Exception):
    """The callback URL's host is (or resolves to) an address we do not send to."""


def new_delivery_id() -> str:
    return "msg_" + uuid.uuid4().hex


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one attempt."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `address` is not a public destination, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _refusal(address.ipv4_mapped)
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if not address.is_global:
        return "a private or reserved address"
    return None


def literal_refusal(url: str) -> str | None:
    """For a URL whose host is an IP literal or localhost: why it is refused; else None."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return "a loopback address"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: resolved and checked when the delivery is sent
    reason = _refusal(address)
    return None if reason is None else f"{host} is {reason}"


def check_callback_url(url: str | None, settings: Settings) -> None:
    """At POST time: refuse a callback_url that is plainly private (422 naming the field)."""
    if url is None or settings.webhook_allow_private:
        return
    reason = literal_refusal(url)
    if reason is not None:
        message = (
            f"webhooks are not sent to private, loopback or link-local addresses ({reason}); "
            "the server's EDGETUNE_WEBHOOK_ALLOW_PRIVATE=true allows them"
        )
        raise ProblemError(
            422,
            "Unprocessable request",
            f"callback_url: {message}",
            "callback-url-refused",
            errors=[{"field": "callback_url", "message": message, "type": "callback-url"}],
        )


def resolve_checked(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The addresses of `host`, all checked (unless allow_private); RefusedAddress if any is not
    global: a name with one private address among public ones is refused as a whole."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RefusedAddress(f"cannot resolve {host}: {exc.strerror}") from exc
    # Scope ids (fe80::1%eth0) are not part of the address.
    addresses = [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]
    for address in addresses:
        reason = _refusal(address)
        if reason is not None and not allow_private:
            raise RefusedAddress(
                f"{host} resolves to {address}, {reason}; set EDGETUNE_WEBHOOK_ALLOW_PRIVATE=true "
                "to allow it"
            )
    return list(dict.fromkeys(str(a) for a in addresses))


def enqueue(
    session: Session,
    job_id: str,
    *,
    status: str,
    tenant: str,
    callback_url: str | None,
    error: str | None,
    finished_at: datetime | None,
) -> None:
    """Queue the job's end event if it has a callback_url. Called by app.queue, with the ended
    job's row, inside the transaction that ended the job; does not commit."""
    if not callback_url:
        return
    now = utcnow()
    event = f"job.{status}"
    base = f"/v1/jobs/{job_id}"
    payload = {
        "type": event,
        "timestamp": now.isoformat(),
        "data": {
            "job_id": job_id,
            "status": status,
            "error": error,
            "finished_at": (finished_at or now).isoformat(),
            "links": {"self": base, "recommendation": f"{base}/recommendation"},
        },
    }
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(
        insert(WebhookDelivery)
        .values(
            id=new_delivery_id(),
            job_id=job_id,
            tenant=tenant,
            event=event,
            payload=payload,
            url=callback_url,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            history=[],
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["job_id", "event"])
    )


def backoff_seconds(attempts: int, settings: Settings) -> float:
    """Wait before the next attempt after `attempts` failed ones: base · 2^(attempts-1), capped."""
    delay = settings.webhook_backoff_seconds * 2 ** max(0, attempts - 1)
    return float(min(settings.webhook_backoff_max_seconds, delay))


def _claim(session: Session, delivery_id: str, now: datetime, settings: Settings) -> bool:
    hold = timedelta(seconds=settings.webhook_timeout_seconds + CLAIM_MARGIN_SECONDS)
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=now + hold)
    )
    session.commit()
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


async def _post(url: str, headers: dict[str, str], body: bytes, settings: Settings) -> int:
    """POST to url, connecting to the checked addresses in turn; the status code. Runs under the
    attempt's deadline (`_attempt`): cancelled there, the client closes its connection."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    # In a thread that is abandoned at the deadline: a resolver that hangs cannot hold it past.
    addresses = await anyio.to_thread.run_sync(
        functools.partial(
            resolve_checked, host, port, allow_private=settings.webhook_allow_private
        ),
        abandon_on_cancel=True,
    )
    headers = {**headers, "Host": parts.netloc.rpartition("@")[2]}
    # TLS: SNI and the certificate check use the URL's name, not the address connected to.
    extensions: dict[str, Any] = {"sni_hostname": host} if parts.scheme == "https" else {}
    # httpx's own timeouts are per operation (a read waits at most this long for the next
    # byte): a receiver that drips a byte at a time never trips them. They stay as a backstop;
    # the deadline is the bound.
    async with httpx.AsyncClient(
        timeout=settings.webhook_timeout_seconds, follow_redirects=False
    ) as http:
        for i, address in enumerate(addresses):
            literal = f"[{address}]" if ":" in address else address
            target = urlunsplit(parts._replace(netloc=f"{literal}:{port}"))
            try:
                # stream: only the status is read, never a (possibly huge) response body.
                async with http.stream(
                    "POST", target, content=body, headers=headers, extensions=extensions
                ) as response:
                    return response.status_code
            except httpx.ConnectError:
                if i == len(addresses) - 1:
                    raise
    raise RefusedAddress(f"{host} has no address")


class DeadlineExceeded(Exception):
    """The attempt did not get a response head within webhook_timeout_seconds."""


def _attempt(url: str, headers: dict[str, str], body: bytes, settings: Settings) -> int:
    """One POST under one overall deadline (resolve + connect + send + the response head),
    however the receiver paces its bytes. Cancellation at the deadline closes the connection.
    Its own event loop: a few milliseconds per attempt, on the sender's thread."""

    async def bounded() -> int:
        try:
            with anyio.fail_after(settings.webhook_timeout_seconds):
                return await _post(url, headers, body, settings)
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"no complete response within the {settings.webhook_timeout_seconds:g} s "
                "delivery deadline (EDGETUNE_WEBHOOK_TIMEOUT_SECONDS)"
            ) from exc

    return anyio.run(bounded)


def send(sessions: sessionmaker[Session], delivery: WebhookDelivery, settings: Settings) -> str:
    """One attempt at one claimed delivery; records it and returns the delivery's new status."""
    with sessions() as session:
        secret = auth.webhook_secret(session, tenant=delivery.tenant)
    body = json.dumps(delivery.payload, sort_keys=True, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "edgetune-webhooks",
        "webhook-id": delivery.id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, delivery.id, timestamp, body),
    }
    started = time.monotonic()
    code: int | None = None
    error: str | None = None
    permanent = False
    try:
        code = _attempt(delivery.url, headers, body, settings)
        if not 200 <= code < 300:
            error = f"HTTP {code}"
    except RefusedAddress as exc:
        error, permanent = f"refused: {exc}", True
    except DeadlineExceeded as exc:
        error = str(exc)  # a slow receiver: failed, retried with the usual backoff
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
    except Exception as exc:
        # A URL no retry can fix (a bad port, an invalid name): recorded as failed, and the
        # worker carries on with the next delivery and the next job.
        error, permanent = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS], True
    now = utcnow()
    attempts = delivery.attempts + 1  # claimed (incremented in the database) before sending
    values: dict[str, Any] = {"last_status_code": code, "last_error": error}
    if error is None:
        values.update(status="delivered", delivered_at=now)
    elif permanent or attempts >= settings.webhook_max_attempts:
        values.update(status="failed")
    else:
        values.update(next_attempt_at=now + timedelta(seconds=backoff_seconds(attempts, settings)))
    entry = {
        "at": now.isoformat(),
        "status_code": code,
        "error": error,
        "seconds": round(time.monotonic() - started, 3),
    }
    values["history"] = [*(delivery.history or []), entry]
    with sessions() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery.id, WebhookDelivery.status == "pending")
            .values(**values)
        )
        session.commit()
    status = str(values.get("status", "pending"))
    log = logger.info if error is None else logger.warning
    log(
        "webhook %s %s for job %s → %s (attempt %d): %s",
        delivery.id,
        delivery.event,
        delivery.job_id,
        delivery.url,
        attempts,
        status if error is None else f"{error}; {status}",
        extra={"job_id": delivery.job_id},
    )
    return status


def deliver_due(
    sessions: sessionmaker[Session], settings: Settings, *, limit: int = DELIVERIES_PER_PASS
) -> int:
    """Send the pending deliveries that are due (at most `limit`); returns how many were tried."""
    now = utcnow()
    with sessions() as session:
        due = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        ).all()
        session.commit()
    tried = 0
    for delivery in due:
        with sessions() as session:
            if not _claim(session, delivery.id, now, settings):
                continue  # another worker took this attempt
        send(sessions, delivery, settings)
        tried += 1
    return tried
