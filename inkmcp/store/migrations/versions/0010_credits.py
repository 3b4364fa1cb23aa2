"""Credits ledger and metering (issue 13): credit_entries, billing_accounts, billing_usage, billing_intervals,
billing_awake, billing_db_sizes.

Owned by: the credits work (inkmcp/billing/, helper "credits"; docs/billing.md).

New tables only, nothing existing changes. Rows go with their account (ON DELETE CASCADE). Downgrade drops the tables,
and with them the ledger: take a dump of credit_entries first if the balances matter.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 05:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UUID = postgresql.UUID(as_uuid=True)


def upgrade() -> None:
    op.create_table(
        "credit_entries",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("account_id", UUID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False, comment="grant | topup | usage | refund"),
        sa.Column("amount", sa.BigInteger(), nullable=False, comment="minor units; negative for usage"),
        sa.Column("source_id", sa.Text(), nullable=False, comment="idempotency key, e.g. stripe:evt_..."),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source_id"),
    )
    op.create_index("ix_credit_entries_account_at", "credit_entries", ["account_id", "at"])
    op.create_table(
        "billing_accounts",
        sa.Column("account_id", UUID, nullable=False),
        sa.Column("balance", sa.BigInteger(), server_default=sa.text("0"), nullable=False,
                  comment="sum of credit_entries.amount, updated with each insert"),
        sa.Column("monthly_cap", sa.BigInteger(), nullable=True, comment="minor units; NULL = INKMCP_MONTHLY_CAP"),
        sa.Column("month_start", sa.Date(), nullable=True, comment="the UTC month month_spend counts"),
        sa.Column("month_spend", sa.BigInteger(), server_default=sa.text("0"), nullable=False,
                  comment="usage charged that month"),
        sa.Column("usage_micro", sa.BigInteger(), server_default=sa.text("0"), nullable=False,
                  comment="exact usage ever, in millionths of a minor unit; charges are differences of its floor"),
        sa.Column("blocked_since", sa.DateTime(timezone=True), nullable=True,
                  comment="out of credits or over the cap since then (metering pass)"),
        sa.Column("tokens", sa.Double(), nullable=True,
                  comment="rate limit bucket: mutating calls left (refilled at INKMCP_RATE_LIMIT_PER_MINUTE)"),
        sa.Column("tokens_at", sa.DateTime(timezone=True), nullable=True, comment="when tokens was computed"),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.create_table(
        "billing_usage",
        sa.Column("kind", sa.String(length=16), nullable=False,
                  comment="persistent | on_demand | static | build | database"),
        sa.Column("subject_id", UUID, nullable=False, comment="service id, deployment id (build) or database id"),
        sa.Column("day_s", sa.BigInteger(), nullable=False,
                  comment="UTC day start, epoch seconds (build: when it finished)"),
        sa.Column("account_id", UUID, nullable=False),
        sa.Column("label", sa.Text(), nullable=False, comment="project/service at charge time, for reports"),
        sa.Column("quantity", sa.BigInteger(), nullable=False,
                  comment="MiB*s (persistent), awake ms (on_demand), s (static), build ms, MB*s (database)"),
        sa.Column("micro", sa.BigInteger(), nullable=False, comment="cost in millionths of a minor unit (floored)"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("kind", "subject_id", "day_s"),
    )
    op.create_index("ix_billing_usage_account_day", "billing_usage", ["account_id", "day_s"])
    # Both are updated in place every interval (a service's row of the day, an account's totals) on columns no
    # index covers: room on each page lets PostgreSQL update them without new index entries (HOT), which took the
    # upsert of 10,000 services from ~300 ms to ~80 ms on the loaded 2-core box (benchmarks/metering.py).
    op.execute("ALTER TABLE billing_usage SET (fillfactor = 50)")
    op.execute("ALTER TABLE billing_accounts SET (fillfactor = 50)")
    op.create_table(
        "billing_segments",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("account_id", UUID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False, comment="persistent | static"),
        sa.Column("subject_id", UUID, nullable=False, comment="service id"),
        sa.Column("label", sa.Text(), nullable=False, comment="project/service when the segment opened"),
        sa.Column("rate_num", sa.BigInteger(), nullable=False,
                  comment="micro-units per second x 3,686,400 (1024 x 3600)"),
        sa.Column("from_s", sa.BigInteger(), nullable=False, comment="epoch seconds"),
        sa.Column("to_s", sa.BigInteger(), nullable=True, comment="epoch seconds; NULL while the rate holds"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_billing_segments_open", "billing_segments", ["subject_id"],
                    postgresql_where=sa.text("to_s IS NULL"))
    op.create_index("ix_billing_segments_account_to", "billing_segments", ["account_id", "to_s"])
    op.create_table(
        "billing_intervals",
        sa.Column("start_s", sa.BigInteger(), nullable=False),
        sa.Column("length_s", sa.Integer(), nullable=False),
        sa.Column("replica", sa.String(length=128), nullable=False),
        sa.Column("charged_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("start_s"),
    )
    op.create_table(
        "billing_awake",
        sa.Column("service_id", UUID, nullable=False),
        sa.Column("start_s", sa.BigInteger(), nullable=False),
        sa.Column("replica", sa.String(length=128), nullable=False),
        sa.Column("awake_ms", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("service_id", "start_s", "replica"),
    )
    op.create_table(
        "billing_db_sizes",
        sa.Column("database_id", UUID, nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["database_id"], ["databases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("database_id"),
    )


def downgrade() -> None:
    op.drop_table("billing_db_sizes")
    op.drop_table("billing_awake")
    op.drop_table("billing_intervals")
    op.drop_index("ix_billing_segments_account_to", table_name="billing_segments")
    op.drop_index("ix_billing_segments_open", table_name="billing_segments")
    op.drop_table("billing_segments")
    op.drop_index("ix_billing_usage_account_day", table_name="billing_usage")
    op.drop_table("billing_usage")
    op.drop_table("billing_accounts")
    op.drop_index("ix_credit_entries_account_at", table_name="credit_entries")
    op.drop_table("credit_entries")
