"""Backups of tenant databases: `database_backups` (issue 10 item 2).

Owned by: the tenant database backups work (inkmcp/dbbackup/, helper "dbbackup").

One row per dump of a project's managed Postgres (scheduled, manual, or the pre-restore dump a restore takes
first); rows go with their project (ON DELETE CASCADE). Downgrade drops the table; the dump files stay on disk
under INKMCP_DB_BACKUP_DIR.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 05:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "database_backups",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("project_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("database_name", sa.Text(), nullable=False,
                  comment="the dumped database (its provider's external_id)"),
        sa.Column("provider", sa.String(length=32), nullable=False, comment="the database provider that served it"),
        sa.Column("kind", sa.String(length=16), nullable=False, comment="scheduled | manual | pre-restore"),
        sa.Column("status", sa.String(length=16), nullable=False, comment="running | ok | failed"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("file", sa.Text(), nullable=False,
                  comment="path relative to the backup dir: <project hex>/<id hex>.dump"),
        sa.Column("error", sa.Text(), nullable=True, comment="why a failed dump failed (no secrets)"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_database_backups_project_created", "database_backups", ["project_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_database_backups_project_created", table_name="database_backups")
    op.drop_table("database_backups")
