"""Which control-plane dump to restore: the latest one taken at or before a point in time.

The factory's nightly job (inkmcp/infra/factory.py `backup_script`) names each dump
`<db>-YYYYmmddTHHMMSSZ.dump` (UTC), keeps 7 days on the host and mirrors them to the box, deleting there only
dumps the host itself mirrored and has since pruned; so the box's live directory holds the last 7 days (and a
previous host's dumps until an operator removes them), and older dumps survive only in the box's snapshots (14
daily by default). We read the time from the name, never from file times (rsync -a keeps them, a copy may not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from inkmcp.dr.errors import DrError


@dataclass(frozen=True)
class Dump:
    name: str
    taken_at: datetime
    size: int
    source: str
    """"live" (the box's directory) or the name of the snapshot holding it."""
    path: str
    """Path on the box, relative to the account's home."""


def dump_time(name: str, database: str) -> datetime | None:
    m = re.fullmatch(re.escape(database) + r"-(\d{8}T\d{6}Z)\.dump", name)
    if m is None:
        return None
    return datetime.strptime(m[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def parse_at(text: str | None) -> datetime:
    """`--at`: ISO 8601 (a time without zone is UTC), or "now"/empty for the latest dump."""
    if text is None or text.strip().lower() in ("", "now", "latest"):
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise DrError(f"--at {text!r} is not a time: pass ISO 8601, e.g. 2026-11-30T23:00:00Z, or 'now'") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def latest_before(dumps: list[Dump], at: datetime) -> Dump | None:
    """The newest dump taken at or before `at`; a live copy wins over the same file in a snapshot."""
    eligible = [d for d in dumps if d.taken_at <= at]
    if not eligible:
        return None
    return max(eligible, key=lambda d: (d.taken_at, d.source == "live"))
