"""Backups: backup runs and tenant database dumps (issue 10).

Owned by: the backup work (inkmcp/backup/).
A no-op until that work fills it (the revision chain is fixed in advance so that parallel
work never makes two heads).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 05:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
