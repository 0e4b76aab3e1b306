"""Fixtures shared by the test modules: the datasets folder, and empty, migrated databases on
real SQLite and real PostgreSQL (tests/db.py says how they are made)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import make_engine, session_factory, upgrade
from tests.db import BACKENDS, admin_connect, make_settings, pg_url, postgres_unavailable


@pytest.fixture(scope="session", autouse=True)
def _data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The default data dir is per user (app.config.default_data_dir): point it at a scratch
    folder, for this process and every command a test starts, so no test writes into the real
    home. Tests that need their own set EDGETUNE_DATA_DIR or XDG_DATA_HOME over it."""
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data-home"))
    yield
    if saved is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = saved


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared datasets folder: EDGETUNE_DATA_ROOT, else <repo>/../shared/datasets."""
    env = os.environ.get("EDGETUNE_DATA_ROOT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A scratch PostgreSQL database for this test session, at head; yields its URL."""
    try:
        admin = admin_connect()
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
        with admin_connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
