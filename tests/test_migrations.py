"""The real Alembic migrations on real SQLite and PostgreSQL: round trip, no drift, refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from app.config import Settings
from app.db import (
    DatabaseNotMigrated,
    check_migrated,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    prepare_database,
    upgrade,
)
from app.models import Base

REPO = Path(__file__).resolve().parents[1]
TABLES = {"jobs", "probes", "recommendations"}


def test_upgrade_downgrade_upgrade(db_settings: Settings, engine: Engine) -> None:
    assert set(inspect(engine).get_table_names()) >= TABLES
    assert current_revision(engine) == head_revision()

    downgrade(db_settings, "base")
    assert current_revision(engine) is None
    assert not TABLES & set(inspect(engine).get_table_names())
    with pytest.raises(DatabaseNotMigrated, match="edgetune db upgrade"):
        check_migrated(engine)

    upgrade(db_settings)
    assert set(inspect(engine).get_table_names()) >= TABLES
    check_migrated(engine)


def test_autogenerate_diff_against_models_is_empty(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_named_constraints_follow_the_convention(engine: Engine) -> None:
    insp = inspect(engine)
    assert insp.get_pk_constraint("jobs")["name"] in ("pk_jobs", None)  # SQLite keeps no pk name
    uniques = {u["name"] for u in insp.get_unique_constraints("jobs")}
    assert "uq_jobs_tenant_idempotency_key" in uniques
    fks = {f["name"] for f in insp.get_foreign_keys("probes")}
    assert fks == {"fk_probes_job_id_jobs"}
    indexes = {i["name"] for i in insp.get_indexes("jobs")}
    assert {"ix_jobs_tenant", "ix_jobs_status_created_at"} <= indexes


INSERT_JOB = text(
    "INSERT INTO jobs (id, tenant, status, spec, spec_hash, attempts, max_attempts, "
    "cancel_requested, progress, created_at, updated_at) VALUES (:id, 'default', :status, '{}', "
    "'hash', 0, 3, FALSE, '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
)


def test_the_database_refuses_a_status_that_is_not_a_job_state(engine: Engine) -> None:
    checks = {c["name"] for c in inspect(engine).get_check_constraints("jobs")}
    assert "ck_jobs_status" in checks
    with engine.begin() as conn:
        conn.execute(INSERT_JOB, {"id": "a", "status": "queued"})
    # Plain SQL, not the ORM: the database itself refuses, whatever writes to it.
    with pytest.raises(IntegrityError, match="ck_jobs_status|CHECK"), engine.begin() as conn:
        conn.execute(INSERT_JOB, {"id": "b", "status": "done"})
    with pytest.raises(IntegrityError, match="ck_jobs_status|CHECK"), engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'paused' WHERE id = 'a'"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, status FROM jobs")).all() == [("a", "queued")]


def _job_with_a_probe(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(INSERT_JOB, {"id": "a", "status": "succeeded"})
        conn.execute(
            text(
                "INSERT INTO probes (job_id, key, config, outcome, result, seconds, created_at) "
                "VALUES ('a', 'p', '{}', 'ok', '{}', 1.0, CURRENT_TIMESTAMP)"
            )
        )


def _rows(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        jobs = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
        return jobs, conn.execute(text("SELECT count(*) FROM probes")).scalar_one()


def test_the_sqlite_rebuild_of_jobs_keeps_every_probe(sqlite_settings: Settings) -> None:
    """0003 copies `jobs` into a new table on SQLite; dropping the old one with foreign keys on
    would delete its probes by cascade."""
    engine = make_engine(sqlite_settings)
    downgrade(sqlite_settings, "0002")
    _job_with_a_probe(engine)
    upgrade(sqlite_settings)
    assert _rows(engine) == (1, 1)
    downgrade(sqlite_settings, "0002")
    assert _rows(engine) == (1, 1)
    # From 0001 in one run, 0003 runs inside the transaction the earlier revisions opened, where
    # SQLite cannot turn foreign keys off.
    downgrade(sqlite_settings, "0001")
    upgrade(sqlite_settings)
    assert current_revision(engine) == head_revision()
    assert _rows(engine) == (1, 1)
    engine.dispose()


def test_explicit_unmigrated_database_is_refused_embedded_one_migrates(tmp_path: Path) -> None:
    explicit = Settings(database_url=f"sqlite:///{tmp_path / 'explicit.db'}")
    assert not explicit.embedded
    engine = make_engine(explicit)
    with pytest.raises(DatabaseNotMigrated, match="run `edgetune db upgrade`"):
        prepare_database(explicit, engine)
    engine.dispose()

    embedded = Settings(data_dir=tmp_path / "embedded")
    assert embedded.embedded and embedded.is_sqlite
    engine = make_engine(embedded)
    prepare_database(embedded, engine)
    assert current_revision(engine) == head_revision()
    assert (tmp_path / "embedded" / "edgetune.db").is_file()
    engine.dispose()


def test_alembic_from_the_shell(tmp_path: Path) -> None:
    db = tmp_path / "shell.db"
    env = {**os.environ, "EDGETUNE_DATABASE_URL": f"sqlite:///{db}"}
    alembic = str(Path(sys.executable).with_name("alembic"))
    subprocess.run([alembic, "upgrade", "head"], cwd=REPO, env=env, check=True, timeout=60)
    engine = make_engine(Settings(database_url=f"sqlite:///{db}"))
    assert current_revision(engine) == head_revision()
    engine.dispose()
