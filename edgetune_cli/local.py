"""The commands that run the service on this machine: serve, worker, db, keys.

`local_service` is the one start-up of the API and a worker in one process, used by `serve` and
by the embedded fallback of the remote commands. torch is imported only once a command is about
to train (`worker.main`), after the settings and the database have been checked, so a refused
start fails fast.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app import logs
from app.auth import (
    DEFAULT_TENANT,
    check_auth_settings,
    create_key,
    list_keys,
    revoke_key,
    tenant_exists,
    webhook_secret,
)
from app.config import Settings
from app.db import (
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    prepare_database,
    session_factory,
    upgrade,
)
from edgetune_cli.output import CliError, err, out

# How long the API may take to start listening before the start counts as failed.
START_SECONDS = 30.0


def configure_logging(log_format: str = "text") -> None:
    """Text lines, or JSON lines with EDGETUNE_LOG_FORMAT=json (app/logs.py)."""
    logs.configure_logging(os.environ.get("EDGETUNE_LOG_LEVEL", "INFO"), log_format)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Service:
    url: str
    stop: threading.Event  # set it to shut the service down


@contextmanager
def local_service(
    settings: Settings, *, port: int, device: str | None = None, quiet: bool = False
) -> Iterator[Service]:
    """The API and one worker thread on `settings`, migrated first; both stop on exit.

    The API starts first: a port that is taken fails the start before any worker claims a job.
    The worker's running job goes back to the queue when the service stops.
    """
    import uvicorn

    from app.main import ProblemHttpProtocol, create_app

    check_auth_settings(settings)  # before importing torch: a refused start fails fast
    engine = make_engine(settings)
    try:
        prepare_database(settings, engine)  # migrate once here, before both sides open it
    finally:
        engine.dispose()
    from worker.main import run_worker  # torch: only the commands that train import it

    # log_config=None in JSON mode: uvicorn's loggers then reach the root's JSON handler.
    log_config = None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=port,
        log_config=log_config,
        log_level="warning" if quiet else None,
        http=ProblemHttpProtocol,
        # ProblemHttpProtocol would take this from the settings anyway; said here so the
        # server's own accounting (and its log line on refusal) agrees.
        limit_concurrency=settings.max_connections,
    )
    server = uvicorn.Server(config)
    api = threading.Thread(target=server.run, name="edgetune-api", daemon=True)
    api.start()
    _await_start(server, api, f"{settings.host}:{port}")
    stop = threading.Event()
    worker = threading.Thread(
        target=run_worker,
        kwargs={"settings": settings, "device": device, "stop": stop},
        name="edgetune-worker",
    )
    worker.start()
    try:
        yield Service(f"http://{_url_host(settings.host)}:{port}", stop)
    finally:
        stop.set()
        worker.join()
        server.should_exit = True
        api.join(timeout=10)


def _await_start(server: object, api: threading.Thread, where: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not getattr(server, "started", False):
        if not api.is_alive():
            raise CliError(f"the API could not listen on {where} (is the port in use?)")
        if time.monotonic() > deadline:
            raise CliError(f"the API did not start on {where} within {START_SECONDS:g} s")
        time.sleep(0.05)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def cmd_serve(args: argparse.Namespace) -> int:
    """The API and one worker in one process; Ctrl-C (or SIGTERM) stops both cleanly."""
    # --host goes into the settings: whether auth may be off depends on the bound host.
    settings = Settings(**({"host": args.host} if args.host else {}))
    configure_logging(settings.log_format)
    with local_service(settings, port=args.port or settings.port, device=args.device) as service:
        signal.signal(signal.SIGTERM, lambda signum, frame: service.stop.set())
        signal.signal(signal.SIGINT, lambda signum, frame: service.stop.set())
        err.print(f"edgetune serving on {service.url} (dashboard /, API docs /docs)")
        service.stop.wait()
        err.print("stopping the worker (a running job goes back to the queue)…")
    return 0


@contextmanager
def embedded() -> Iterator[str]:
    """The embedded default (SQLite in the data dir) on a free loopback port, for one command."""
    settings = Settings(host="127.0.0.1")
    with local_service(settings, port=free_port(), quiet=True) as service:
        yield service.url


def cmd_worker(args: argparse.Namespace) -> int:
    settings = Settings()
    configure_logging(settings.log_format)
    engine = make_engine(settings)
    try:
        prepare_database(settings, engine)  # refuse an unmigrated database before importing torch
    finally:
        engine.dispose()
    from worker.main import start

    return start(settings, device=args.device, once=args.once)


def cmd_db(args: argparse.Namespace) -> int:
    settings = Settings()
    where = make_engine(settings)
    shown = where.url.render_as_string(hide_password=True)
    try:
        if args.db_command == "upgrade":
            upgrade(settings, args.revision)
        elif args.db_command == "downgrade":
            downgrade(settings, args.revision)
        current, head = current_revision(where), head_revision()
    finally:
        where.dispose()
    state = "head" if current == head else f"head is {head}: run `edgetune db upgrade`"
    out.print(f"{shown}: revision {current or '(none)'} ({state})")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """API keys and tenants, on the database directly (an admin command, like `db upgrade`)."""
    settings = Settings()
    engine = make_engine(settings)
    try:
        prepare_database(settings, engine)
        with session_factory(engine)() as session:
            return KEY_COMMANDS[args.keys_command](session, args)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    finally:
        engine.dispose()


def _key_create(session: Session, args: argparse.Namespace) -> int:
    created = create_key(session, tenant=args.tenant, name=args.name)
    err.print(f"API key {created.prefix}… (id {created.id}) for tenant {created.tenant!r}:")
    print(created.key)  # alone on stdout, for `KEY=$(edgetune keys create ...)`
    err.print("it is shown only this once: store it now (send it as the X-API-Key header)")
    if created.new_tenant_secret:
        err.print(
            f"new tenant {created.tenant!r}; its webhook signing secret (also shown by "
            f"`edgetune keys secret --tenant {created.tenant}`): {created.new_tenant_secret}"
        )
    return 0


def _key_list(session: Session, args: argparse.Namespace) -> int:
    from rich.table import Table

    rows = list_keys(session, tenant=args.tenant)
    if args.json:
        out.print_json(
            data=[
                {
                    "id": k.id,
                    "tenant": k.tenant,
                    "name": k.name,
                    "prefix": k.prefix,
                    "created_at": k.created_at.isoformat(),
                    "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                    "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                }
                for k in rows
            ]
        )
        return 0
    table = Table("id", "tenant", "name", "prefix", "created", "last used", "revoked")
    for k in rows:
        table.add_row(
            k.id,
            k.tenant,
            k.name,
            k.prefix + "…",
            f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
        )
    out.print(table)
    return 0


def _key_revoke(session: Session, args: argparse.Namespace) -> int:
    key = revoke_key(session, args.key)
    out.print(f"revoked key {key.prefix}… (id {key.id}) of tenant {key.tenant!r}")
    return 0


def _key_secret(session: Session, args: argparse.Namespace) -> int:
    if args.tenant != DEFAULT_TENANT and not tenant_exists(session, args.tenant):
        # A typo must not create a tenant (and a secret no job will ever be signed with).
        raise CliError(
            f"no tenant {args.tenant!r}: tenants are created with their first key "
            f"(`edgetune keys create --tenant {args.tenant}`)"
        )
    secret = webhook_secret(session, tenant=args.tenant, rotate=args.rotate)
    if args.rotate:
        err.print("rotated: webhooks are signed with this secret from now on")
    print(secret)
    return 0


KEY_COMMANDS = {
    "create": _key_create,
    "list": _key_list,
    "revoke": _key_revoke,
    "secret": _key_secret,
}
