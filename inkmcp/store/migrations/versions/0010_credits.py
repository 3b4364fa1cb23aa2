"""Credits ledger and metering (issue 13).

Owned by: the credits work.
A no-op until that work fills it (the revision chain is fixed in advance so that parallel
work never makes two heads).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 05:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
