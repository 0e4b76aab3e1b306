"""Database fixtures shared by the test modules: real SQLite and real PostgreSQL, never a mock.

Use from a test module with

    pytest_plugins = ["tests.db"]

and then ask for `db_settings` (Settings, parametrized over both backends), `engine`,
`sessions` (a sessionmaker) or `session`. Each test gets an empty, migrated database:
SQLite: a fresh file in tmp_path, migrated by the real Alembic migrations.
PostgreSQL: one scratch database per test session on 127.0.0.1:5432 (user postgres), created and
migrated by the real migrations once, emptied before each test, dropped at the end. When
PostgreSQL is unreachable its tests fail under CI=true and skip (with the reason) elsewhere.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import make_engine, session_factory, upgrade

PG_HOST = os.environ.get("EDGETUNE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("EDGETUNE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("EDGETUNE_TEST_PG_USER", "postgres")
BACKENDS = ["sqlite", "postgresql"]


def pg_url(database: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def _admin_connect() -> psycopg.Connection:
    return psycopg.connect(
        host=PG_HOST,
        port=PG_PORT,
        user=PG_USER,
        dbname="postgres",
        autocommit=True,
        connect_timeout=3,
    )


def postgres_unavailable(reason: str) -> None:
    """Fail under CI (PostgreSQL is part of the test environment there), skip elsewhere."""
    message = f"PostgreSQL on {PG_HOST}:{PG_PORT} is unreachable: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A scratch PostgreSQL database for this test session, at head; yields its URL."""
    try:
        admin = _admin_connect()
    except psycopg.OperationalError as exc:
        postgres_unavailable(str(exc).strip())
    name = f"edgetune_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = pg_url(name)
    try:
        upgrade(Settings(database_url=url, data_dir=Path("/nonexistent-unused")))
        yield url
    finally:
        with _admin_connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _empty_postgres(url: str) -> None:
    engine = make_engine(Settings(database_url=url))
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "TRUNCATE webhook_deliveries, api_keys, tenants, recommendations, probes, "
                    "jobs CASCADE"
                )
            )
    finally:
        engine.dispose()


def make_settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings for an empty, migrated database of `backend`, with data_dir in tmp_path."""
    if backend == "sqlite":
        settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'edgetune.db'}", data_dir=tmp_path / "data"
        )
        upgrade(settings)
        return settings
    url: str = request.getfixturevalue("pg_database")
    _empty_postgres(url)
    return Settings(database_url=url, data_dir=tmp_path / "data")


@pytest.fixture(params=BACKENDS)
def db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings pointing at an empty, migrated database; parametrized over SQLite and PostgreSQL."""
    return make_settings(request.param, tmp_path, request)


@pytest.fixture
def pg_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """PostgreSQL only (for tests that need several processes on one database)."""
    return make_settings("postgresql", tmp_path, request)


@pytest.fixture
def sqlite_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """SQLite only: an explicit (not embedded), migrated file in tmp_path."""
    return make_settings("sqlite", tmp_path, request)


@pytest.fixture
def engine(db_settings: Settings) -> Iterator[Engine]:
    engine = make_engine(db_settings)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    with sessions() as session:
        yield session
