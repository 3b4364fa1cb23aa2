"""GitHub sign-in, tokens, push-to-deploy (issue 11).

Owned by: the GitHub work (inkmcp/github/).
A no-op until that work fills it (the revision chain is fixed in advance so that parallel
work never makes two heads).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 05:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
