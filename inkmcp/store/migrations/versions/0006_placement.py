"""Placement records: which run server each service is on and what it reserves (issue 8 item 6).

Owned by: the placement work (inkmcp/placement/).
Filled in by its owner; a no-op until then (the chain 0004 → 0005 → 0006 is fixed so that
concurrent work on issue 8 never forks alembic's history).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 14:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
