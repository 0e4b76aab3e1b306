"""API keys and tenants: `X-API-Key: et_...` → the tenant every job read and write is scoped to.

A key is `et_` + 32 random bytes (URL-safe base64), shown once when it is created; the database
keeps its sha256 only. A plain fast hash is enough here, unlike for passwords: a 256-bit random
key cannot be guessed or brute-forced from its hash, so a slow KDF (bcrypt, argon2) would add
milliseconds to every request and no security. Lookup is by the hash's unique index.

Admin functions (create, list, revoke, the webhook secret) are used by `edgetune keys ...`
directly on the database, like `edgetune db upgrade`; the HTTP API only resolves keys.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings, is_loopback_host
from app.errors import ProblemError
from app.models import ApiKey, Tenant, utcnow

KEY_PREFIX = "et_"
# Shown in listings: "et_" and 9 random characters (54 bits), so prefixes of a tenant's keys
# practically never collide and `keys revoke PREFIX` picks one key.
SHOWN_PREFIX_CHARS = 12
HEADER = "X-API-Key"
# Used when auth is disabled (the embedded default on loopback).
DEFAULT_TENANT = "default"
# last_used_at is written at most this often per key: not one write per request (on SQLite
# every write takes the database's single write lock).
LAST_USED_RESOLUTION = timedelta(minutes=1)
MAX_TENANT_NAME = 64


class AuthConfigError(RuntimeError):
    """Auth was disabled where that is not allowed."""


@dataclass(frozen=True)
class CreatedKey:
    """A new key: `key` is the secret, shown once and never stored."""

    id: str
    tenant: str
    name: str
    prefix: str
    key: str
    # The tenant's webhook secret when this call created the tenant (shown once too), else None.
    new_tenant_secret: str | None


def check_auth_settings(settings: Settings) -> None:
    """Refuse disabled auth anywhere but the embedded default on a loopback host."""
    if settings.auth == "disabled" and not (settings.embedded and is_loopback_host(settings.host)):
        where = "the embedded SQLite default" if settings.embedded else "an explicit database"
        raise AuthConfigError(
            f"EDGETUNE_AUTH=disabled is only allowed for the embedded default on a loopback "
            f"host; this server uses {where} on host {settings.host!r}. Create a key with "
            "`edgetune keys create --tenant NAME` and send it as X-API-Key"
        )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: "whsec_" + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _check_tenant_name(tenant: str) -> None:
    if not (0 < len(tenant) <= MAX_TENANT_NAME) or not all(
        c.isalnum() or c in "-_." for c in tenant
    ):
        raise ValueError(
            f"tenant names are 1 to {MAX_TENANT_NAME} letters, digits, '-', '_' or '.', "
            f"not {tenant!r}"
        )


def ensure_tenant(session: Session, tenant: str) -> tuple[Tenant, bool]:
    """The tenant's row, created (with a fresh webhook secret) if missing; (tenant, created).
    Commits."""
    _check_tenant_name(tenant)
    row = session.get(Tenant, tenant)
    if row is not None:
        session.commit()
        return row, False
    row = Tenant(name=tenant, webhook_secret=new_webhook_secret(), created_at=utcnow())
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        # Created meanwhile by another process: use theirs.
        session.rollback()
        existing = session.get(Tenant, tenant)
        session.commit()
        if existing is None:
            raise
        return existing, False
    return row, True


def create_key(session: Session, *, tenant: str, name: str = "") -> CreatedKey:
    """A new key for `tenant` (creating the tenant if needed). The key is in the result only."""
    tenant_row, created = ensure_tenant(session, tenant)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        tenant=tenant,
        name=name,
        prefix=key[:SHOWN_PREFIX_CHARS],
        key_hash=hash_key(key),
        created_at=utcnow(),
    )
    session.add(row)
    session.commit()
    return CreatedKey(
        id=row.id,
        tenant=tenant,
        name=name,
        prefix=row.prefix,
        key=key,
        new_tenant_secret=tenant_row.webhook_secret if created else None,
    )


def list_keys(session: Session, *, tenant: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    rows = list(session.scalars(query).all())
    session.commit()
    return rows


def revoke_key(session: Session, prefix_or_id: str) -> ApiKey:
    """Revoke the one key whose id or shown prefix is `prefix_or_id`; ValueError when none or
    several match. Revoking a revoked key keeps its first revocation time."""
    # As shown by `keys list`: "et_AbCdEfGh1…", maybe cut short by a narrow terminal.
    wanted = prefix_or_id.strip().rstrip("…")
    matches = session.scalars(
        select(ApiKey).where(or_(ApiKey.id == wanted, ApiKey.prefix == wanted))
    ).all()
    if not matches and len(wanted) >= 6:
        escaped = wanted.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        starts = f"{escaped}%"
        matches = session.scalars(
            select(ApiKey).where(
                or_(ApiKey.id.like(starts, escape="\\"), ApiKey.prefix.like(starts, escape="\\"))
            )
        ).all()
    if len(matches) != 1:
        session.commit()
        what = "no key" if not matches else f"{len(matches)} keys"
        raise ValueError(f"{what} with id or prefix {prefix_or_id!r}; see `edgetune keys list`")
    key = matches[0]
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    session.commit()
    session.refresh(key)
    session.commit()
    return key


def tenant_exists(session: Session, tenant: str) -> bool:
    return session.get(Tenant, tenant) is not None


def webhook_secret(session: Session, *, tenant: str, rotate: bool = False) -> str:
    """The tenant's webhook signing secret (creating the tenant if needed); a new one if rotate."""
    row, created = ensure_tenant(session, tenant)
    if rotate and not created:
        secret = new_webhook_secret()
        session.execute(update(Tenant).where(Tenant.name == tenant).values(webhook_secret=secret))
        session.commit()
        return secret
    return row.webhook_secret


def tenant_for_key(session: Session, key: str, *, now: datetime | None = None) -> str | None:
    """The tenant of an active key, None for an unknown or revoked one; notes when it was used.

    Leaves the transaction open: the request's own query runs in it, and its commit (or the
    caller's) saves the note; one transaction per request, not two, saves a BEGIN and a COMMIT.
    """
    now = now or utcnow()
    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
    return row.tenant


def unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401,
        "Unauthorized",
        detail,
        "unauthorized",
        # RFC 9110 asks a 401 to name a scheme; API keys have no registered one, so this names
        # the header to send.
        headers={"WWW-Authenticate": f'ApiKey realm="edgetune", header="{HEADER}"'},
    )
