"""redteam4: one tenant's stalled LISTEN held the tenant PostgreSQL server's NOTIFY queue for every tenant.

The NOTIFY queue is the whole server's: every database's notifications go into one queue (pgdata/pg_notify, on the
data dir's filesystem, the control plane's, up to 8 GB), freed only up to the listener furthest behind. mallory
(free tier) LISTENs on one connection and leaves it in an open transaction (she may SET
idle_in_transaction_session_timeout = 0; a long query, or a client that never reads its socket, does the same), and
NOTIFYs from another: 105 MiB in 7.5 s, all of it kept. At 100 % every tenant's NOTIFY fails ("too many
notifications in the NOTIFY queue": job queues and pub/sub built on LISTEN/NOTIFY stop) and 8 GB of the control
plane's filesystem are taken, outside her database's disk image. Not performed to the end here (8 GB of this box's
disk): the test shows her listener holds what she sends, which is all the rest needs.

Fix (`store/tenant_disks.py` release_notify_queue, in `inkmcp serve`'s supervision of the tenant server, every 2 s):
past 1 % of the queue (~80 MiB) every tenant backend not idle for 10 s (in a transaction, running, or blocked
writing to its client) is ended, which lets the queue go.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from tests.security.conftest import ROOT, session
from tests.support import ServerProc, call

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: ~100 MiB of notifications, then a 10 s stall

PROJECT = "rt4-notify"
SEND_MB = 100  # past the 1 % (~82 MiB) at which InkMCP steps in
PAYLOAD = "x" * 7900  # NOTIFY payloads are at most 8000 bytes


@pytest.fixture(scope="module")
async def url(server: ServerProc) -> str:
    async with session(server, "mallory") as m:
        await call(m, "ensure_project", name=PROJECT)
        await call(m, "provision_database", project_name=PROJECT)
        creds = await call(m, "get_database_credentials", project_name=PROJECT)
    return str(creds["url"])


def usage(conn: psycopg.Connection[Any]) -> float:
    row = conn.execute("SELECT pg_notification_queue_usage()").fetchone()
    assert row is not None
    return float(row[0])


async def test_a_stalled_listener_never_holds_the_notify_queue(url: str) -> None:
    """mallory's listener sits in an open transaction while her other connection sends ~100 MiB of notifications:
    the queue goes past 1 %, and within ~10 s of stalling her listener is ended and the queue is let go (before
    the fix the listener stayed and the queue kept every notification: 1.2 % of 8 GB after this test)."""
    listener = psycopg.connect(url, autocommit=True)
    sender = psycopg.connect(url)
    try:
        listener.execute("SET idle_in_transaction_session_timeout = 0")
        listener.execute("LISTEN rt4")
        listener.autocommit = False
        listener.execute("SELECT 1")  # idle in a transaction from here: its place in the queue stays
        sent, held = 0, 0.0
        while sent < SEND_MB << 20:
            with sender.cursor() as c:
                for i in range(250):
                    c.execute("SELECT pg_notify('rt4', %s)", (f"{sent}-{i}-{PAYLOAD}",))
            sender.commit()
            sent += 250 * 8000
            held = max(held, usage(sender))  # (InkMCP may end her listener while she still sends: a slow box)
            sender.commit()
        assert held > 0.01, held  # control: her listener held what she sent, past the line
        deadline = time.monotonic() + 40  # 10 s of stall + a 2 s round, on a loaded box
        while usage(sender) > 0.005 and time.monotonic() < deadline:
            sender.commit()
            time.sleep(1)
        left = usage(sender)
        assert left <= 0.005, f"the NOTIFY queue is still {left:.2%} full (was {held:.2%}): her listener holds it"
        with pytest.raises(psycopg.OperationalError):
            listener.execute("SELECT 1")  # she learns it from her own listener: ended
    finally:
        listener.close()
        sender.close()
