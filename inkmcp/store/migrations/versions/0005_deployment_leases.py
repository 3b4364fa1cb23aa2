"""Deployment leases and shared keys for more than one replica (issue 8 item 7).

Why: two `inkmcp serve` processes on one Postgres share the deployments. A deployment's pipeline runs on
the replica that holds its lease (`claimed_by`, `lease_until`, renewed by a heartbeat); when a replica dies
its leases expire and another replica takes the deployments over. `lease_epoch` is the fencing token: every
claim increments it and every write of a pipeline requires the epoch it claimed, so a replica that lost its
lease (paused, partitioned) cannot record a step afterwards (inkmcp/core/leases.py).

`shared_keys` holds what replicas must agree on and used to live in the data dir: the MAC key behind the
"same deploy again is a no-op" check (an existing `secrets/mac.key` is adopted on first start, so existing
hashes keep matching) and a check value of the encryption keys (a replica started with other keys fails at
start-up instead of writing secrets nobody else can read). Values are Fernet tokens under the encryption
keys, so `rotate_all` re-encrypts them like every other `*_enc` column.

Adding nullable columns and one with a constant default is catalogue-only in PostgreSQL 11+ (no rewrite).
Existing unfinished deployments get no claim: the first replica to start claims and resumes them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 14:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "deployments",
        sa.Column(
            "claimed_by", sa.String(length=128), nullable=True, comment="replica id holding the pipeline's lease"
        ),
    )
    op.add_column(
        "deployments",
        sa.Column(
            "lease_until",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="the lease expires then (database clock); any replica may take over after",
        ),
    )
    op.add_column(
        "deployments",
        sa.Column(
            "lease_epoch",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="fencing token: +1 per claim; writes need the current one",
        ),
    )
    op.create_table(
        "shared_keys",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value_enc", sa.LargeBinary(), nullable=False, comment="Fernet token of the key"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("shared_keys")
    op.drop_column("deployments", "lease_epoch")
    op.drop_column("deployments", "lease_until")
    op.drop_column("deployments", "claimed_by")
