"""Provider-owned ids in the control-plane database: `provider_ref` on projects, services and deployments.

Why: a remote compute provider (Coolify) creates things whose ids only it knows (a Coolify project, one
application per process, the run server, each deployment's uuid). Kept in the provider's memory they are lost
by a restart, and a second replica never sees them; searched for by name on every call they cost requests
against a rate limit of 200 a minute. So the provider reports them through the contract's `record` callback
and core stores them here, before the provider takes its next remote step, which is what lets a restarted
InkMCP re-attach to a deployment in flight instead of starting a second one (quality review §(b)1, §(d)3).

Each column holds `{"<provider name>": <that provider's JSON>}`, so a switch of compute provider never feeds
one provider's ids to another. Existing rows get `{}` (the local provider records nothing: its state is its
data dir). Adding a column with a constant default is a catalogue-only change in PostgreSQL 11+: no table
rewrite, no long lock.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("projects", "services", "deployments")
COMMENT = "the compute provider's own ids, {provider name: ref}; see inkmcp.store.refs"


def upgrade() -> None:
    for table in TABLES:
        op.add_column(
            table,
            sa.Column(
                "provider_ref",
                postgresql.JSONB(astext_type=sa.Text()),
                server_default=sa.text("'{}'::jsonb"),
                nullable=False,
                comment=COMMENT,
            ),
        )


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_column(table, "provider_ref")
