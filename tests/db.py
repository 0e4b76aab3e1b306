"""Database helpers for the tests: real SQLite and real PostgreSQL, never a mock.

The fixtures built on them (`db_settings`, parametrized over both backends, `engine`, `sessions`,
`session`, ...) are in tests/conftest.py. Each test gets an empty, migrated database:
SQLite: a fresh file in tmp_path, migrated by the real Alembic migrations.
PostgreSQL: one scratch database per test session on 127.0.0.1:5432 (user postgres), created and
migrated by the real migrations once, emptied before each test, dropped at the end. When
PostgreSQL is unreachable its tests fail under CI=true and skip (with the reason) elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from app.config import Settings
from app.db import make_engine, upgrade

PG_HOST = os.environ.get("EDGETUNE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("EDGETUNE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("EDGETUNE_TEST_PG_USER", "postgres")
BACKENDS = ["sqlite", "postgresql"]


def pg_url(database: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def admin_connect() -> psycopg.Connection:
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


def empty_postgres(url: str) -> None:
    engine = make_engine(Settings(database_url=url))
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "TRUNCATE workers, webhook_deliveries, api_keys, tenants, recommendations, "
                    "probes, jobs CASCADE"
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
    empty_postgres(url)
    return Settings(database_url=url, data_dir=tmp_path / "data")
