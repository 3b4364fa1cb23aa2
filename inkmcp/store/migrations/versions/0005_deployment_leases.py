"""Deployment leases and shared keys for more than one replica (issue 8 item 7).

Owned by: the multi-replica work (inkmcp/core/deployments.py).
Filled in by its owner; a no-op until then (the chain 0004 → 0005 → 0006 is fixed so that
concurrent work on issue 8 never forks alembic's history).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 14:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
