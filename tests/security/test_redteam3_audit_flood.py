"""redteam3: refused tool calls wrote whatever their arguments held into the shared control database.

Every mutating call, refused or not, gets an audit row with its arguments (secrets redacted) and its target. Nothing
bounded their size: mallory's `ensure_project(name=<1 MB>)` and `deploy_app(build_command=<1 MB>, ...)` were refused
at once (a bad name, a bad URL) and each still stored its megabyte, twice for ensure_project (the name is the row's
target too), in the control plane's PostgreSQL, on the data dir's filesystem every account shares; random text
does not compress. A refusal costs the server milliseconds, so one key fills the disk at tens of MB a second and
the control plane stops for everyone.

Fix (`core/audit.py` `bounded`): each stored string is cut to AUDIT_STRING_CHARS with the count of what was cut, and
an arguments object past AUDIT_ARGUMENTS_BYTES keeps its first keys only.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import psycopg
import pytest

from tests.security.conftest import ROOT, session
from tests.support import ServerProc

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: shares a real server

BLOB_CHARS = 1 << 20
CALLS = 3


def blob() -> str:
    """A megabyte of text PostgreSQL cannot compress (TOAST's pglz would shrink a run of one character to nothing)."""
    return secrets.token_urlsafe(BLOB_CHARS * 3 // 4)[:BLOB_CHARS]


def stored_bytes(server: ServerProc, account: str, since: float) -> tuple[int, int]:
    """(rows, bytes of their arguments, target and error as stored) of `account`'s audit rows since `since`."""
    url = server.control_url().replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(pg_column_size(a.arguments) + coalesce(pg_column_size(a.target), 0)"
            " + coalesce(pg_column_size(a.error), 0)), 0) FROM audit_log a JOIN accounts c ON c.id = a.account_id"
            " WHERE c.name = %s AND a.at >= to_timestamp(%s)", (account, since)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def refuse(s: Any, tool: str, **args: Any) -> str:
    result = await s.call_tool(tool, args)
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert result.is_error, f"{tool} was accepted: {text[:300]}"
    return text


async def test_refused_calls_store_a_bounded_audit_row(server: ServerProc) -> None:
    """CALLS refused calls of each kind, each with a megabyte in one argument: every one is refused and audited,
    and together their rows hold less than 64 KiB of the control database (before the fix: 1-2 MB a call)."""
    since = time.time() - 1
    async with session(server, "mallory") as m:
        for _ in range(CALLS):
            await refuse(m, "ensure_project", name=blob())
            await refuse(m, "deploy_app", repo_url="ftp://example.invalid/x.git", project_name="rt3-audit",
                         build_command=blob())
    rows, size = stored_bytes(server, "mallory", since)
    assert rows >= 2 * CALLS, f"the refused calls were not audited ({rows} rows)"
    assert size < 64 << 10, f"{rows} refused calls stored {size:,} bytes in the control database"
