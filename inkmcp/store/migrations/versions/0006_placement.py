"""Placement records: which run server each service is on and what it reserves there (issue 8 item 6).

Owned by: the placement work (inkmcp/placement/; records.py explains the locking).

Two tables, not columns on `services`:

* `placement_nodes`: one row per run server placement has used or an operator has drained (Coolify uuid,
  last known name, `draining_since`). It is the row a reservation locks (`SELECT … FOR UPDATE`) before it
  re-checks the node's room, so two replicas placing at once serialise per node, not globally; and it holds
  InkMCP's own state about a server that Coolify has no field for (draining).
* `placements`: one row per placed service (primary key `service_id`: a second reserve for the same service
  finds it, which is what makes reserve idempotent and placements sticky across redeploys). The row stores the
  limits asked and the charge taken (integers: MiB and millicores, rounded once), so a node's load is an exact
  `sum()` over its rows, and a change of the overcommit ratio applies to new reservations only, never silently
  overbooks a node. `ON DELETE CASCADE` from services and projects releases the reservation with the service
  even if nobody calls release. Only the Coolify provider places, so the local provider's services have no row;
  columns on `services` (core's table) would be NULL for them and would widen the lock of every core update.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 14:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "placement_nodes",
        sa.Column("uuid", sa.String(length=64), nullable=False, comment="Coolify server uuid"),
        sa.Column("name", sa.Text(), nullable=True, comment="last known Coolify server name"),
        sa.Column("draining_since", sa.DateTime(timezone=True), nullable=True,
                  comment="set by inkmcp nodes drain: no new placements here"),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("uuid"),
    )
    op.create_table(
        "placements",
        sa.Column("service_id", sa.UUID(), nullable=False),
        sa.Column("project_id", sa.UUID(), nullable=False),
        sa.Column("node_uuid", sa.String(length=64), nullable=False),
        sa.Column("mode", sa.String(length=32), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False, comment="limit asked (all processes), MiB"),
        sa.Column("millicpus", sa.Integer(), nullable=False, comment="limit asked (all processes), millicores"),
        sa.Column("charged_memory_mb", sa.Integer(), nullable=False, comment="what counts against the node"),
        sa.Column("charged_millicpus", sa.Integer(), nullable=False, comment="what counts against the node"),
        sa.Column("labels", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"),
                  nullable=False, comment="node labels the service requires"),
        sa.Column("spread", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["node_uuid"], ["placement_nodes.uuid"]),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("service_id"),
    )
    op.create_index("ix_placements_node_uuid", "placements", ["node_uuid"])
    op.create_index("ix_placements_project_id", "placements", ["project_id"])


def downgrade() -> None:
    op.drop_index("ix_placements_project_id", table_name="placements")
    op.drop_index("ix_placements_node_uuid", table_name="placements")
    op.drop_table("placements")
    op.drop_table("placement_nodes")
