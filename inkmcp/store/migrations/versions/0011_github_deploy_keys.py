"""Deploy keys for private GitHub repos under Coolify compute (issue 11): github_deploy_keys.

Owned by: the github-coolify work (helper "ghkeys"; inkmcp/github/deploy_keys.py, docs/github.md).

A new table only, nothing existing changes. Rows go with their service and account (ON DELETE CASCADE);
`private_key_enc` is sealed with the store's encryption keys (rotated by `rotate_all`, like every `*_enc`
column). Downgrade drops the table: delete the services deployed from private repos first (that removes their
keys from GitHub and Coolify), or the keys stay there with no record of them here.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 09:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UUID = postgresql.UUID(as_uuid=True)


def upgrade() -> None:
    op.create_table(
        "github_deploy_keys",
        sa.Column("service_id", UUID, nullable=False),
        sa.Column("account_id", UUID, nullable=False, comment="whose GitHub token added (and removes) the key"),
        sa.Column("repo", sa.Text(), nullable=False, comment="owner/name the key is (to be) added to"),
        sa.Column("public_key", sa.Text(), nullable=False, comment="OpenSSH public key line"),
        sa.Column("private_key_enc", sa.LargeBinary(), nullable=False,
                  comment="Fernet token of the OpenSSH private key"),
        sa.Column("github_key_id", sa.BigInteger(), nullable=True, comment="GitHub's deploy key id, once added"),
        sa.Column("coolify_key_uuid", sa.String(length=64), nullable=True,
                  comment="Coolify private key uuid, once there"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("service_id"),
    )


def downgrade() -> None:
    op.drop_table("github_deploy_keys")
