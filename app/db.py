"""Engine and session factories, and the schema's version check and upgrade (Alembic).

SQLite (the embedded default): a file in the data dir, WAL so readers never wait for the writer,
busy_timeout so writers queue for the lock instead of failing, foreign keys on. PostgreSQL:
psycopg 3 (`postgresql+psycopg://`).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings

SQLITE_BUSY_TIMEOUT_MS = 5000


class DatabaseNotMigrated(RuntimeError):
    """The database schema is not at the code's head revision."""


def _normalise_url(url: str) -> str:
    # Plain `postgresql://` would pick psycopg2, which is not installed; psycopg 3 is.
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url[len("postgres://") :]
    return url


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(settings: Settings) -> Engine:
    url = make_url(_normalise_url(settings.database_url))
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: the pool hands connections to the API's worker threads (one at
        # a time each); sqlite3 itself is built thread-safe.
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: queue functions commit and then return their row, which callers read.
    return sessionmaker(bind=engine, expire_on_commit=False)


def migrations_dir() -> Path:
    """The Alembic scripts, inside this package so that a wheel ships them (alembic.ini at the
    top of a checkout points here too, for `alembic upgrade head` from a shell)."""
    return Path(__file__).with_name("migrations")


def alembic_config() -> Config:
    """Alembic's configuration, built in code (no alembic.ini): it works wherever the package is
    installed."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_migrated(engine: Engine) -> None:
    """Raise DatabaseNotMigrated unless the schema is at head."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise DatabaseNotMigrated(
            f"the database {engine.url.render_as_string(hide_password=True)} is at revision "
            f"{current or '(none)'}, the code needs {head}: run `edgetune db upgrade`"
        )


@contextmanager
def _migration_lock(settings: Settings) -> Iterator[None]:
    # Two embedded processes starting at once on a fresh SQLite file would both create the tables;
    # a file lock beside the database lets one migrate while the other waits. PostgreSQL runs
    # Alembic's DDL in one transaction, so no lock is needed there.
    url = make_url(_normalise_url(settings.database_url))
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        yield
        return
    lock_path = Path(url.database).with_suffix(".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_alembic(settings: Settings, action: str, revision: str) -> None:
    engine = make_engine(settings)
    try:
        with _migration_lock(settings), engine.begin() as conn:
            cfg = alembic_config()
            # app/migrations/env.py uses this connection instead of building its own engine.
            cfg.attributes["connection"] = conn
            if action == "upgrade":
                command.upgrade(cfg, revision)
            else:
                command.downgrade(cfg, revision)
    finally:
        engine.dispose()


def upgrade(settings: Settings, revision: str = "head") -> None:
    _run_alembic(settings, "upgrade", revision)


def downgrade(settings: Settings, revision: str) -> None:
    _run_alembic(settings, "downgrade", revision)


def prepare_database(settings: Settings, engine: Engine) -> None:
    """What the API and the worker do on start: migrate the embedded default, check the rest."""
    if settings.embedded:
        upgrade(settings)
    check_migrated(engine)
