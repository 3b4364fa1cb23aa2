"""Deploy keys for private GitHub repos under Coolify compute (issue 11).

Owned by: the github-coolify work (helper "ghkeys"). Slot reserved by the coordinator; empty until its owner fills it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 09:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
