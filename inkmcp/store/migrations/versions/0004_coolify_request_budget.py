"""Coolify request budget shared by every replica (issue 8 item 2): table `coolify_request_budget` and the
functions `inkmcp_coolify_budget_take` / `inkmcp_coolify_budget_pause` that `inkmcp.coolify.budget.DbBudget` calls.

One row per Coolify user (key = a hash of the token, never the token): `stamps` is the sliding log of the send
times (epoch seconds, the database's clock) of the requests granted within the last `hold` seconds, `paused_until`
the end of a pause ordered by a 429's Retry-After. Why a sliding log: see the module docstring of
inkmcp/coolify/budget.py (Coolify's fixed window has an unknown phase; only "at most N in any window" is safe).

`take` locks the row (created on first use), drops expired stamps, grants min(want, free) slots (plus up to `extra`
taken ahead while the log stays under half the limit) and answers how
long until the next one frees and the grant's time: one statement, one round trip, atomic across replicas because
every change goes through the row lock. `settle` moves one stamp later when its request's answer came back later
than the margin (the request may have reached Coolify that late). `pause` records a 429's Retry-After.
Times come from clock_timestamp() read after the lock is held, so a grant is never stamped earlier than it
happened.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 14:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TAKE = """
CREATE FUNCTION inkmcp_coolify_budget_take(p_key text, p_want integer, p_extra integer, p_limit integer,
                                           p_hold double precision,
                                           OUT granted integer, OUT wait_s double precision,
                                           OUT t double precision)
LANGUAGE plpgsql AS $$
DECLARE
    live double precision[];
    paused double precision;
    n integer;
BEGIN
    SELECT b.stamps, b.paused_until INTO live, paused FROM coolify_request_budget b WHERE b.key = p_key FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO coolify_request_budget (key) VALUES (p_key) ON CONFLICT (key) DO NOTHING;
        SELECT b.stamps, b.paused_until INTO live, paused FROM coolify_request_budget b WHERE b.key = p_key FOR UPDATE;
    END IF;
    t := extract(epoch FROM clock_timestamp());
    live := ARRAY(SELECT s FROM unnest(live) AS s WHERE s > t - p_hold ORDER BY s);
    n := coalesce(cardinality(live), 0);
    IF paused - t > 0.05 THEN
        granted := 0;
        wait_s := paused - t;
    ELSE
        granted := greatest(0, least(p_want, p_limit - n));
        IF granted = p_want AND p_extra > 0 THEN
            -- slots taken ahead for the caller's process, only while the log stays under half the limit
            granted := granted + greatest(0, least(p_extra, p_limit / 2 - n - granted));
        END IF;
        IF granted > 0 THEN
            live := live || array_fill(t, ARRAY[granted]);
            n := n + granted;
        END IF;
        IF granted < p_want THEN
            wait_s := greatest(0.001, live[n - p_limit + 1] + p_hold - t);
        ELSE
            wait_s := 0;
        END IF;
    END IF;
    UPDATE coolify_request_budget SET stamps = live, updated_at = clock_timestamp() WHERE key = p_key;
END
$$;
"""

SETTLE = """
CREATE FUNCTION inkmcp_coolify_budget_settle(p_key text, p_stamp double precision, p_late double precision,
                                             p_hold double precision) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    live double precision[];
    i integer;
BEGIN
    SELECT b.stamps INTO live FROM coolify_request_budget b WHERE b.key = p_key FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    i := array_position(live, p_stamp);
    IF i IS NULL THEN
        live := live || (p_stamp + p_late);
    ELSE
        live[i] := p_stamp + p_late;
    END IF;
    live := ARRAY(SELECT s FROM unnest(live) AS s
                  WHERE s > extract(epoch FROM clock_timestamp()) - p_hold ORDER BY s);
    UPDATE coolify_request_budget SET stamps = live, updated_at = clock_timestamp() WHERE key = p_key;
END
$$;
"""

PAUSE = """
CREATE FUNCTION inkmcp_coolify_budget_pause(p_key text, p_seconds double precision) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO coolify_request_budget AS b (key, paused_until)
    VALUES (p_key, extract(epoch FROM clock_timestamp()) + p_seconds)
    ON CONFLICT (key) DO UPDATE
    SET paused_until = greatest(b.paused_until, extract(epoch FROM clock_timestamp()) + p_seconds),
        updated_at = clock_timestamp();
$$;
"""


def upgrade() -> None:
    op.create_table(
        "coolify_request_budget",
        sa.Column("key", sa.Text(), primary_key=True, comment="sha256:<hex> of the token, or an explicit user key"),
        sa.Column("stamps", postgresql.ARRAY(sa.Double()), nullable=False,
                  server_default=sa.text("'{}'::double precision[]"),
                  comment="epoch seconds of the grants still counting against the limit"),
        sa.Column("paused_until", sa.Double(), nullable=False, server_default=sa.text("0"),
                  comment="epoch seconds: nobody sends before (a 429's Retry-After)"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        comment="Coolify API rate budget shared by InkMCP replicas; see inkmcp.coolify.budget",
    )
    op.execute(TAKE)
    op.execute(SETTLE)
    op.execute(PAUSE)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS inkmcp_coolify_budget_pause(text, double precision)")
    op.execute("DROP FUNCTION IF EXISTS inkmcp_coolify_budget_settle(text, double precision, double precision, "
               "double precision)")
    op.execute("DROP FUNCTION IF EXISTS inkmcp_coolify_budget_take(text, integer, integer, integer, double precision)")
    op.drop_table("coolify_request_budget")
