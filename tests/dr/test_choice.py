"""Which dump `--at` picks, and how a time is read: the pure rules behind restore-postgres (no box needed)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from inkmcp.dr.dumps import Dump, dump_time, latest_before, parse_at
from inkmcp.dr.errors import DrError


def _d(name: str, source: str = "live") -> Dump:
    t = dump_time(name, "inkmcp")
    assert t is not None
    return Dump(name, t, 1, source, name)


def test_dump_names_are_read_as_utc_and_others_ignored() -> None:
    assert dump_time("inkmcp-20261130T023012Z.dump", "inkmcp") == datetime(2026, 11, 30, 2, 30, 12, tzinfo=UTC)
    for other in ("inkmcp-20261130T023012Z.dump.tmp", "other-20261130T023012Z.dump", "inkmcp-latest.dump",
                  ".inkmcp-20261130T023012Z.dump.XyZ12"):  # rsync's in-flight temp names among them
        assert dump_time(other, "inkmcp") is None


def test_latest_at_or_before_prefers_the_live_copy() -> None:
    a, b = _d("inkmcp-20261120T023000Z.dump", "2026-11-21T04-00-00"), _d("inkmcp-20261128T023000Z.dump")
    b_snap = _d("inkmcp-20261128T023000Z.dump", "2026-11-29T04-00-00")
    assert latest_before([a, b, b_snap], datetime(2026, 11, 29, tzinfo=UTC)) == b
    assert latest_before([a, b], datetime(2026, 11, 28, 2, 30, tzinfo=UTC)) == b  # "at or before": inclusive
    assert latest_before([a, b], datetime(2026, 11, 25, tzinfo=UTC)) == a
    assert latest_before([a, b], datetime(2026, 11, 1, tzinfo=UTC)) is None


def test_at_accepts_iso_times_and_names_the_format_otherwise() -> None:
    assert parse_at("2026-11-30T23:00:00Z") == datetime(2026, 11, 30, 23, tzinfo=UTC)
    assert parse_at("2026-11-30 23:00") == datetime(2026, 11, 30, 23, tzinfo=UTC)  # no zone: UTC
    assert parse_at("2026-12-01T00:00:00+01:00") == datetime(2026, 11, 30, 23, tzinfo=UTC)
    assert abs((parse_at(None) - datetime.now(UTC)).total_seconds()) < 5
    with pytest.raises(DrError, match="--at 'yesterday' is not a time: pass ISO 8601"):
        parse_at("yesterday")


def test_two_bundles_made_in_the_same_second_keep_both_names_and_times() -> None:
    """A second `backup-coolify` within the same second once replaced the first bundle on the box."""
    from inkmcp.dr.bundle import bundle_name, bundle_time

    now = datetime(2026, 12, 1, 7, 37, 5, 600_000, tzinfo=UTC)
    first, second = bundle_name(now), bundle_name(now)
    assert first != second
    assert bundle_time(first) == bundle_time(second) == now.replace(microsecond=0)
    assert bundle_time("coolify-secrets-20261201T073705Z.bundle") == now.replace(microsecond=0)  # older names
    assert bundle_time("coolify-secrets-notatime.bundle") is None
