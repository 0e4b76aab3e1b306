"""workers: what each worker can run (plugins with versions, device, last seen); jobs: the
plugins a job needs, so that a worker claims only jobs it can run.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model's types: a migration must not change when the models do.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("models", JSON, nullable=False),
        sa.Column("datasets", JSON, nullable=False),
        sa.Column("device", sa.String(255), nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=False),
        sa.Column("last_seen_at", UTC_DATETIME, nullable=False),
        sa.Column("stopped_at", UTC_DATETIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index(op.f("ix_workers_last_seen_at"), "workers", ["last_seen_at"])
    # Nullable columns: a plain ALTER TABLE ADD COLUMN on SQLite too (no table rebuild).
    op.add_column("jobs", sa.Column("model_plugin", sa.String(100), nullable=True))
    op.add_column("jobs", sa.Column("dataset_plugin", sa.String(100), nullable=True))


def downgrade() -> None:
    # SQLite (3.35+) drops a column without a rebuild when no index or constraint uses it.
    op.drop_column("jobs", "dataset_plugin")
    op.drop_column("jobs", "model_plugin")
    op.drop_index(op.f("ix_workers_last_seen_at"), table_name="workers")
    op.drop_table("workers")
