"""Add-ons of several kinds per project: `databases.kind` (issue 9 item 6).

Owned by: the add-ons work (inkmcp/core/databases.py, inkmcp/providers/database/redis.py).

A project may hold one Postgres (managed or bring-your-own) and one Redis. The one-row-per-project unique
constraint of 0001 becomes unique (project_id, kind). Existing rows are all Postgres (managed or byo), which the
column's server default says, so they stay valid and nothing is rewritten.

Downgrade drops the Redis rows (0006's schema can hold only one database per project); their instances keep
running until deleted by hand (`<data_dir>/redis/ink_<project id hex>`).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 02:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "databases",
        sa.Column("kind", sa.String(length=16), server_default=sa.text("'postgres'"), nullable=False,
                  comment="postgres | redis: one of each per project"),
    )
    op.drop_constraint("databases_project_id_key", "databases", type_="unique")
    op.create_unique_constraint("uq_databases_project_kind", "databases", ["project_id", "kind"])


def downgrade() -> None:
    op.execute("DELETE FROM databases WHERE kind <> 'postgres'")
    op.drop_constraint("uq_databases_project_kind", "databases", type_="unique")
    op.create_unique_constraint("databases_project_id_key", "databases", ["project_id"])
    op.drop_column("databases", "kind")
