"""Billing under Coolify compute, and rate segments kept when the rate changes (issue 13).

Owned by: the billing work (helper "billcore"; docs/billing.md "Metering" and "Caps and zero").

1. `billing_segments` (migration 0010) are now written when a service's rate *changes*, by PostgreSQL itself:
   statement-level triggers on `services` (INSERT, UPDATE, DELETE, with transition tables, so a statement that
   changes 10,000 services does one set-based write, and a statement that changes nothing billable writes nothing)
   close the open segment of every service whose rate basis changed and open the new one. Every path that changes a
   service (deploy, reconcile, delete, a project's cascade, an operator's SQL) is covered, and charging an interval
   only reads the segments (issue 13: "charging 10,000 services ... under 100 ms of database time", also in the
   first interval after all of them changed). A segment now holds the rate's *basis* (`units`: reserved MiB for a
   persistent service, 1024 for a static one), not money: the price is applied when charging, so an operator's
   price change needs no rewrite. A live on_demand service has a segment too (units 0: no rate), which is what the
   charge joins its awake samples with (account, label), instead of reading `services`. Existing segments (priced
   under 0010's scheme) are replaced by one open segment per live service, from the moment its deployment finished.
2. `billing_awake` gets an index on `start_s` (the charge reads one interval's samples).
3. `billing_suspensions`: what InkMCP suspended because an account could not pay (persistent services past the grace
   period, on_demand services' wake-up routes), recorded before the remote change and removed after it was undone,
   so a restarted process or another replica resumes exactly those (crash-safe, idempotent).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 09:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SYNC = """
CREATE OR REPLACE FUNCTION billing_sync_segments() RETURNS trigger LANGUAGE plpgsql AS $$
-- Rate segments of the services a statement touched: close the open one where the billable basis changed (mode,
-- reserved memory, live or not), open the new one. Set-based over the statement's transition tables.
DECLARE
  now_s bigint := floor(extract(epoch FROM now()));
  ids uuid[];
BEGIN
  IF TG_OP = 'UPDATE' THEN
    SELECT array_agg(n.id) INTO ids FROM billing_new n JOIN billing_old o ON o.id = n.id
      WHERE n.live_deployment_id IS DISTINCT FROM o.live_deployment_id OR n.mode IS DISTINCT FROM o.mode
         OR n.settings -> 'resources' -> 'memory_mb' IS DISTINCT FROM o.settings -> 'resources' -> 'memory_mb';
  ELSIF TG_OP = 'INSERT' THEN
    SELECT array_agg(n.id) INTO ids FROM billing_new n
      WHERE n.live_deployment_id IS NOT NULL AND n.mode IN ('persistent', 'static', 'on_demand');
  ELSE
    SELECT array_agg(o.id) INTO ids FROM billing_old o;
  END IF;
  IF ids IS NULL THEN
    RETURN NULL;  -- nothing billable changed (a status or url update): no write
  END IF;
  WITH want AS (
    SELECT sv.id AS subject_id, p.account_id, sv.mode AS kind, p.name || '/' || sv.name AS label,
           CASE WHEN sv.mode = 'persistent'
                THEN COALESCE(CAST(sv.settings -> 'resources' ->> 'memory_mb' AS bigint), 512)
                WHEN sv.mode = 'static' THEN 1024 ELSE 0 END AS units,
           LEAST(now_s, CAST(floor(extract(epoch FROM COALESCE(d.finished_at, now()))) AS bigint)) AS live_s
    FROM unnest(ids) AS t(id) JOIN services sv ON sv.id = t.id JOIN projects p ON p.id = sv.project_id
    JOIN deployments d ON d.id = sv.live_deployment_id
    WHERE sv.mode IN ('persistent', 'static', 'on_demand')
  ), closed AS (
    UPDATE billing_segments g SET to_s = GREATEST(g.from_s, now_s)
    WHERE g.subject_id = ANY (ids) AND g.to_s IS NULL
      AND NOT EXISTS (SELECT 1 FROM want w WHERE w.subject_id = g.subject_id AND w.kind = g.kind
                      AND w.units = g.units)
  )
  INSERT INTO billing_segments (account_id, kind, subject_id, label, units, from_s)
  SELECT w.account_id, w.kind, w.subject_id, w.label, w.units,
         -- the first rate of a service starts when its deployment went live; any later one (resized, back from
         -- on_demand, redeployed after an undeploy) now, never overlapping an earlier segment
         CASE WHEN EXISTS (SELECT 1 FROM billing_segments g WHERE g.subject_id = w.subject_id) THEN now_s
              ELSE w.live_s END
  FROM want w
  WHERE NOT EXISTS (SELECT 1 FROM billing_segments g WHERE g.subject_id = w.subject_id AND g.to_s IS NULL
                    AND g.kind = w.kind AND g.units = w.units);
  RETURN NULL;
END $$;
"""

TRIGGERS = (
    "CREATE TRIGGER billing_segments_ins AFTER INSERT ON services REFERENCING NEW TABLE AS billing_new "
    "FOR EACH STATEMENT EXECUTE FUNCTION billing_sync_segments()",
    "CREATE TRIGGER billing_segments_upd AFTER UPDATE ON services REFERENCING OLD TABLE AS billing_old "
    "NEW TABLE AS billing_new FOR EACH STATEMENT EXECUTE FUNCTION billing_sync_segments()",
    "CREATE TRIGGER billing_segments_del AFTER DELETE ON services REFERENCING OLD TABLE AS billing_old "
    "FOR EACH STATEMENT EXECUTE FUNCTION billing_sync_segments()",
)

SEED = """
INSERT INTO billing_segments (account_id, kind, subject_id, label, units, from_s)
SELECT p.account_id, sv.mode, sv.id, p.name || '/' || sv.name,
       CASE WHEN sv.mode = 'persistent'
            THEN COALESCE(CAST(sv.settings -> 'resources' ->> 'memory_mb' AS bigint), 512)
            WHEN sv.mode = 'static' THEN 1024 ELSE 0 END,
       LEAST(floor(extract(epoch FROM now())), floor(extract(epoch FROM COALESCE(d.finished_at, now()))))
FROM services sv JOIN projects p ON p.id = sv.project_id JOIN deployments d ON d.id = sv.live_deployment_id
WHERE sv.mode IN ('persistent', 'static', 'on_demand')
"""


def upgrade() -> None:
    op.execute("DELETE FROM billing_segments")
    op.alter_column("billing_segments", "rate_num", new_column_name="units",
                    comment="rate basis: reserved MiB (persistent), 1024 (static), 0 (on_demand: charged by awake "
                            "time); the charge is price x units x 10^6 / (1024 x 3600) millionths of a minor unit "
                            "per second")
    op.alter_column("billing_segments", "from_s", comment="epoch seconds (when the rate took effect)")
    op.create_index("ix_billing_segments_to", "billing_segments", ["to_s"])
    # The trigger looks up a service's open segment and whether it ever had one: both by subject (0010's partial
    # index covered only the first).
    op.drop_index("ix_billing_segments_open", table_name="billing_segments")
    op.create_index("ix_billing_segments_subject", "billing_segments", ["subject_id", "to_s"])
    # The charge reads one interval's awake samples; the primary key (service_id, start_s, replica) cannot find them
    # without reading the whole table (two days of samples: ~10^7 rows for 10,000 services at 60 s intervals).
    op.create_index("ix_billing_awake_start", "billing_awake", ["start_s"])
    op.execute(SEED)
    op.execute(SYNC)
    for t in TRIGGERS:
        op.execute(t)
    op.create_table(
        "billing_suspensions",
        sa.Column("service_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("account_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False, comment="compute provider name (local, coolify)"),
        sa.Column("mode", sa.String(length=16), nullable=False, comment="persistent | on_demand"),
        sa.Column("token", sa.String(length=64), nullable=False,
                  comment="opaque id of the service's 402 page (/_inkmcp/suspended/<token>)"),
        sa.Column("state", sa.String(length=16), nullable=False,
                  comment="suspending (recorded, remote change under way) | suspended"),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"),
                  nullable=False, comment="what was changed and how to undo it (apps stopped, router document)"),
        sa.Column("since", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("service_id"),
        sa.UniqueConstraint("token"),
    )


def downgrade() -> None:
    op.drop_table("billing_suspensions")
    for name in ("billing_segments_del", "billing_segments_upd", "billing_segments_ins"):
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON services")
    op.execute("DROP FUNCTION IF EXISTS billing_sync_segments()")
    op.drop_index("ix_billing_awake_start", table_name="billing_awake")
    op.drop_index("ix_billing_segments_to", table_name="billing_segments")
    op.drop_index("ix_billing_segments_subject", table_name="billing_segments")
    op.create_index("ix_billing_segments_open", "billing_segments", ["subject_id"],
                    postgresql_where=sa.text("to_s IS NULL"))
    op.execute("DELETE FROM billing_segments")  # 0010's metering rebuilds its priced segments at the next pass
    op.alter_column("billing_segments", "units", new_column_name="rate_num",
                    comment="micro-units per second x 3,686,400 (1024 x 3600)")
    op.alter_column("billing_segments", "from_s", comment="epoch seconds")
