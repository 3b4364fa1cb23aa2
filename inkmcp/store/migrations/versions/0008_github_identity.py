"""GitHub sign-in, tokens, push-to-deploy (issue 11).

Owned by: the GitHub work (inkmcp/github/, models in inkmcp/github/models.py).

* github_identities: the GitHub user (numeric id, unique) an account signed in as, and their token sealed with
  the store's encryption keys (`token_enc`, rotated by `rotate_all` like every `*_enc` column);
* github_tracking: per service deployed from a GitHub repo, the repo/branch a push redeploys and whether it does;
* github_deliveries: webhook delivery ids seen, so a replayed delivery is ignored;
* deployment_triggers: which push (delivery, commit, pusher) started a deployment;
* web_sessions: the web UI's server-side sessions (only a hash of each session token; inkmcp/web/models.py).

New tables only: nothing existing is rewritten. Downgrade drops them (stored GitHub tokens are lost: users sign
in again).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 05:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "github_identities",
        sa.Column("account_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("github_id", sa.BigInteger(), nullable=False, comment="GitHub's numeric user id"),
        sa.Column("login", sa.String(length=39), nullable=False, comment="GitHub login at the last sign-in"),
        sa.Column("token_enc", sa.LargeBinary(), nullable=False,
                  comment="Fernet token of the user's GitHub access token"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("account_id"),
        sa.UniqueConstraint("github_id"),
    )
    op.create_table(
        "github_tracking",
        sa.Column("service_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("repo", sa.Text(), nullable=False,
                  comment="owner/name, lowercase (GitHub names are case-insensitive)"),
        sa.Column("branch", sa.Text(), nullable=False, comment="branch a push to which redeploys the service"),
        sa.Column("auto_deploy", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("service_id"),
    )
    op.create_index("ix_github_tracking_repo_branch", "github_tracking", ["repo", "branch"])
    op.create_table(
        "github_deliveries",
        sa.Column("delivery_id", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("repo", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("delivery_id"),
    )
    op.create_table(
        "deployment_triggers",
        sa.Column("deployment_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.String(length=32), server_default=sa.text("'github_push'"), nullable=False),
        sa.Column("delivery_id", sa.String(length=64), nullable=False),
        sa.Column("repo", sa.Text(), nullable=False),
        sa.Column("branch", sa.Text(), nullable=False),
        sa.Column("commit", sa.String(length=64), nullable=True, comment="head commit of the push"),
        sa.Column("pusher", sa.Text(), nullable=True, comment="GitHub login of who pushed"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("deployment_id"),
    )
    # web_sessions: the web UI's server-side sessions (model in inkmcp/web/models.py, helper "web")
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("account_id", sa.UUID(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False,
                  comment="SHA-256 of the session token the signed cookie carries"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index(op.f("ix_web_sessions_account_id"), "web_sessions", ["account_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_web_sessions_account_id"), table_name="web_sessions")
    op.drop_table("web_sessions")
    op.drop_table("deployment_triggers")
    op.drop_table("github_deliveries")
    op.drop_index("ix_github_tracking_repo_branch", table_name="github_tracking")
    op.drop_table("github_tracking")
    op.drop_table("github_identities")
