"""jobs.status: a CHECK constraint on the five job states.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 00:00:00
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONSTRAINT = "ck_jobs_status"
# The job states, frozen (app.schemas.JobStatus): a migration must not change when the models do.
CONDITION = "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')"
# The tables whose rows reference jobs (ON DELETE CASCADE).
CHILDREN = ("probes", "recommendations", "webhook_deliveries")


@contextmanager
def sqlite_children_kept() -> Iterator[None]:
    """SQLite cannot add or drop a CHECK: batch mode copies `jobs` into a new table and drops the
    old one, and with foreign keys on (app.db turns them on), that DROP deletes every probe,
    recommendation and webhook delivery by cascade. `PRAGMA foreign_keys=OFF` is a no-op inside
    a transaction, which a run from an older revision is already in when it gets here, so the
    rows that reference jobs are kept aside in temporary tables and put back instead."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        yield
        return
    for table in CHILDREN:
        bind.exec_driver_sql(f"CREATE TEMP TABLE kept_{table} AS SELECT * FROM {table}")
    yield
    for table in CHILDREN:
        # Already empty with foreign keys on; emptied here for a connection that has them off.
        bind.exec_driver_sql(f"DELETE FROM {table}")
        bind.exec_driver_sql(f"INSERT INTO {table} SELECT * FROM temp.kept_{table}")
        bind.exec_driver_sql(f"DROP TABLE temp.kept_{table}")


def upgrade() -> None:
    with sqlite_children_kept(), op.batch_alter_table("jobs") as batch:
        batch.create_check_constraint(op.f(CONSTRAINT), CONDITION)


def downgrade() -> None:
    with sqlite_children_kept(), op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f(CONSTRAINT), type_="check")
