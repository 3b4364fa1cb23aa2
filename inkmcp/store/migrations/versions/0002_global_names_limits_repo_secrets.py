"""Project names unique across accounts; per-account limits; repo_url credentials out of plaintext.

1. `uq_projects_account_name` (unique per account) becomes `uq_projects_name`, a unique index on
   lower(name): hostnames are `<service>.<project>.<domain>`, so two accounts holding one name meant
   one could take over the other's URL. If existing rows collide the migration stops (nothing is
   changed, DDL is transactional) and names every duplicate with the SQL to rename one; it never
   picks a winner itself.
2. Nullable per-account limit overrides on `accounts` (NULL = the INKMCP_MAX_* default).
3. `services.repo_url_enc`: the full repo URL, encrypted, when it carries credentials. The migration
   cannot encrypt (the Fernet keys live in the data dir or INKMCP_ENCRYPTION_KEYS, which the migration
   does not see), so it only redacts: userinfo in `projects.repo_url` / `services.repo_url` becomes
   `***`. Nothing is lost that deploy_app needs: every deploy_app call passes repo_url again (with
   its token), which stores it encrypted. Only a deployment interrupted by this very upgrade, from a
   private repo, fails to resume (an auth error) and needs one deploy_app call.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from inkmcp.errors import InkError

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Userinfo of a URL: everything between '://' and the last '@' before the path. Same rule as
# inkmcp.core.names.redact_url (greedy, so a password containing '@' is removed whole).
USERINFO_SQL = "://[^/?#]*@"


class DuplicateProjectNames(InkError):
    """Raised (and the upgrade rolled back) when two accounts hold one project name. An InkError, so
    `inkmcp serve` and the CLI print it as a plain error, not a traceback."""

    code = "migration_blocked"


def _check_duplicates(conn: sa.Connection) -> None:
    rows = conn.execute(
        sa.text(
            "SELECT lower(p.name) AS name, "
            "       array_agg(a.name || ' (project id ' || p.id || ')' ORDER BY p.created_at) AS holders "
            "FROM projects p JOIN accounts a ON a.id = p.account_id "
            "GROUP BY lower(p.name) HAVING count(*) > 1 ORDER BY 1"
        )
    ).all()
    if not rows:
        return
    lines = [f"  {name!r}: held by {', '.join(holders)}" for name, holders in rows]
    raise DuplicateProjectNames(
        "cannot upgrade the InkMCP store: project names are now unique across all accounts (they form the "
        "service URLs), and these names are held by more than one account:\n"
        + "\n".join(lines)
        + "\nNothing was changed.",
        fix="rename all but one of each, e.g. with the store's psql:\n"
        "  UPDATE projects SET name = '<new-name>' WHERE id = '<project id>';\n"
        "(a DNS label: a-z, 0-9 and '-'). The renamed project's services answer at the new URL after their "
        "next deploy_app or a restart of `inkmcp serve`. Then start InkMCP again.",
    )


def upgrade() -> None:
    conn = op.get_bind()
    _check_duplicates(conn)
    op.drop_constraint("uq_projects_account_name", "projects", type_="unique")
    op.create_index("uq_projects_name", "projects", [sa.text("lower(name)")], unique=True)

    op.add_column("accounts", sa.Column("max_projects", sa.Integer(), nullable=True))
    op.add_column("accounts", sa.Column("max_services_per_project", sa.Integer(), nullable=True))
    op.add_column("accounts", sa.Column("max_databases", sa.Integer(), nullable=True))
    op.add_column("accounts", sa.Column("max_concurrent_builds", sa.Integer(), nullable=True))
    op.add_column(
        "accounts",
        sa.Column(
            "database_tiers",
            postgresql.ARRAY(sa.String(length=32)),
            nullable=True,
            comment="tiers this account may choose; NULL = INKMCP_DATABASE_TIERS",
        ),
    )

    op.add_column(
        "services",
        sa.Column(
            "repo_url_enc",
            sa.LargeBinary(),
            nullable=True,
            comment="Fernet token of the full repo_url, set only when it carries credentials",
        ),
    )
    for table in ("projects", "services"):
        op.execute(
            sa.text(
                f"UPDATE {table} SET repo_url = regexp_replace(repo_url, :pattern, '://***@') "
                "WHERE repo_url ~ :pattern AND repo_url !~ '://\\*\\*\\*@'"
            ).bindparams(pattern=USERINFO_SQL)
        )
        op.alter_column(table, "repo_url", comment="for display: credentials replaced by ***",
                        existing_type=sa.Text(), existing_nullable=table == "projects")


def downgrade() -> None:
    for table in ("projects", "services"):
        op.alter_column(table, "repo_url", comment=None, existing_type=sa.Text(),
                        existing_nullable=table == "projects")
    op.drop_column("services", "repo_url_enc")
    for col in ("database_tiers", "max_concurrent_builds", "max_databases", "max_services_per_project",
                "max_projects"):
        op.drop_column("accounts", col)
    op.drop_index("uq_projects_name", table_name="projects")
    op.create_unique_constraint("uq_projects_account_name", "projects", ["account_id", "name"])
