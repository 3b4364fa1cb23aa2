"""Billing under Coolify compute and dashboard billing settings (issue 13).

Owned by: the billing work (helper "billcore" owns the file; "billweb" asks it). Slot reserved by the coordinator;
empty until its owner fills it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 09:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
