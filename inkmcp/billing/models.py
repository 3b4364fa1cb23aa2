"""The billing tables (migration 0010) on the shared declarative Base.

`credit_entries` is the ledger: append-only, one row per grant, top-up, usage charge or refund, each with a unique
`source_id` so that replaying the event that caused it (a webhook, a metering pass, a CLI retry) adds nothing.
`billing_accounts.balance` is the sum of an account's entries, kept in the same statement that inserts them (so a
balance check is one indexed row read); tests assert it always equals the sum.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB  # --- billcore: billing_suspensions.detail
from sqlalchemy.orm import Mapped, mapped_column

from inkmcp.store.models import Base


class CreditEntry(Base):
    """One ledger entry. Positive amounts add credits (grant, topup, refund), negative ones spend them (usage)."""

    __tablename__ = "credit_entries"
    __table_args__ = (Index("ix_credit_entries_account_at", "account_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), comment="grant | topup | usage | refund")
    amount: Mapped[int] = mapped_column(BigInteger, comment="minor units; negative for usage")
    source_id: Mapped[str] = mapped_column(Text, unique=True, comment="idempotency key, e.g. stripe:evt_...")
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class BillingAccount(Base):
    """Per-account billing state: the derived balance, the cap, this month's spend and the exact usage total."""

    __tablename__ = "billing_accounts"

    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    balance: Mapped[int] = mapped_column(
        BigInteger, server_default=text("0"), comment="sum of credit_entries.amount, updated with each insert"
    )
    monthly_cap: Mapped[int | None] = mapped_column(BigInteger, comment="minor units; NULL = INKMCP_MONTHLY_CAP")
    month_start: Mapped[date | None] = mapped_column(Date, comment="the UTC month month_spend counts")
    month_spend: Mapped[int] = mapped_column(BigInteger, server_default=text("0"), comment="usage charged that month")
    usage_micro: Mapped[int] = mapped_column(
        BigInteger, server_default=text("0"),
        comment="exact usage ever, in millionths of a minor unit; charges are differences of its floor",
    )
    blocked_since: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), comment="out of credits or over the cap since then (metering pass)"
    )
    tokens: Mapped[float | None] = mapped_column(
        Double, comment="rate limit bucket: mutating calls left (refilled at INKMCP_RATE_LIMIT_PER_MINUTE)"
    )
    tokens_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), comment="when tokens was computed")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class UsageRecord(Base):
    """Exact usage of one subject (service, deployment build, database) in one UTC day: each charged interval adds
    to its day's row (an update that touches no indexed column, so no index grows), which keeps the table at one
    row per service per day however short the interval."""

    __tablename__ = "billing_usage"
    __table_args__ = (Index("ix_billing_usage_account_day", "account_id", "day_s"),)

    kind: Mapped[str] = mapped_column(
        String(16), primary_key=True, comment="persistent | on_demand | static | build | database"
    )
    subject_id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, comment="service id, deployment id (build) or database id"
    )
    day_s: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, comment="UTC day start, epoch seconds (build: when it finished)"
    )
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(Text, comment="project/service at charge time, for reports")
    quantity: Mapped[int] = mapped_column(
        BigInteger, comment="MiB*s (persistent), awake ms (on_demand), s (static), build ms, MB*s (database)"
    )
    micro: Mapped[int] = mapped_column(BigInteger, comment="cost in millionths of a minor unit (floored)")


class RateSegment(Base):
    """A persistent or static service's cost rate over a span of time, for reports: the rate changes only when the
    service does (deployed, resized, suspended, deleted), so a metering pass writes a row only then, not per service
    per interval. Cost over [a, b) = price * units * 10^6 * (b - a) / RATE_DENOMINATOR millionths of a minor unit
    (billcore, 0012: written by a trigger on `services` when the basis changes)."""

    __tablename__ = "billing_segments"
    __table_args__ = (
        Index("ix_billing_segments_account_to", "account_id", "to_s"),
        # --- billcore: 0012, the charge reads segments overlapping [s, e); the trigger finds a service's segments
        Index("ix_billing_segments_to", "to_s"),
        Index("ix_billing_segments_subject", "subject_id", "to_s"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), comment="persistent | static")
    subject_id: Mapped[uuid.UUID] = mapped_column(comment="service id")
    label: Mapped[str] = mapped_column(Text, comment="project/service when the segment opened")
    # --- billcore: migration 0012 keeps segments by trigger when a rate changes, with the rate's basis, not money
    units: Mapped[int] = mapped_column(
        BigInteger, comment="rate basis: reserved MiB (persistent), 1024 (static), 0 (on_demand: charged by awake "
                            "time); the charge is price x units x 10^6 / (1024 x 3600) millionths of a minor unit "
                            "per second")
    from_s: Mapped[int] = mapped_column(BigInteger, comment="epoch seconds (when the rate took effect)")
    # --- end billcore
    to_s: Mapped[int | None] = mapped_column(BigInteger, comment="epoch seconds; NULL while the rate holds")


class BillingInterval(Base):
    """Intervals already charged: a replica claims one by inserting its row in the charging transaction."""

    __tablename__ = "billing_intervals"

    start_s: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    length_s: Mapped[int] = mapped_column(Integer)
    replica: Mapped[str] = mapped_column(String(128))
    charged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AwakeSample(Base):
    """Awake time of an on_demand service in one interval as one replica saw it (the charge takes the max)."""

    __tablename__ = "billing_awake"
    __table_args__ = (Index("ix_billing_awake_start", "start_s"),)  # --- billcore: 0012, one interval's samples

    service_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    start_s: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    replica: Mapped[str] = mapped_column(String(128), primary_key=True)
    awake_ms: Mapped[int] = mapped_column(Integer)


class DatabaseSize(Base):
    """Last measured size of a managed database (storage charges read it)."""

    __tablename__ = "billing_db_sizes"

    database_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("databases.id", ondelete="CASCADE"), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    measured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# --- billcore: migration 0012, what InkMCP suspended because an account could not pay (issue 13 item 4)
class BillingSuspension(Base):
    """A service InkMCP put to sleep (persistent, past the grace period) or stopped waking (on_demand) because its
    account could not pay: recorded before the remote change, removed once it was undone, so any replica (or this
    one after a restart) resumes exactly what was suspended."""

    __tablename__ = "billing_suspensions"

    service_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), primary_key=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(32), comment="compute provider name (local, coolify)")
    mode: Mapped[str] = mapped_column(String(16), comment="persistent | on_demand")
    token: Mapped[str] = mapped_column(String(64), unique=True,
                                       comment="opaque id of the service's 402 page (/_inkmcp/suspended/<token>)")
    state: Mapped[str] = mapped_column(String(16),
                                       comment="suspending (recorded, remote change under way) | suspended")
    detail: Mapped[dict] = mapped_column(JSONB, server_default=text("'{}'::jsonb"),
                                         comment="what was changed and how to undo it (apps stopped, router document)")
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
# --- end billcore
