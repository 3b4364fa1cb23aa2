"""cron and at on the local provider's host: tenant users may not schedule jobs that run outside their sandbox.

A job installed with `crontab -` or `at` runs from the cron/at daemon, not in the service's cgroups (no memory,
CPU or pids cap; not killed with the service). Both tools admit only the users in their allow file once it
exists. Checked by hand with Debian's cron 3.0pl1-162 and at 3.2.5 (not installed on the test host, so not run
here): with these files, `crontab -` and `crontab -l` as a tenant uid print "You (nobody) are not allowed to
use this program (crontab)" and `at now` "You do not have permission to use at."; with the uid listed they go on.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inkmcp.providers.compute.local.users import restrict_schedulers
from tests.requirements import is_root, requires


def test_allow_files_are_created_root_only_and_idempotent(tmp_path: Path) -> None:
    assert restrict_schedulers(tmp_path) == [tmp_path / "cron.allow", tmp_path / "at.allow"]
    for name in ("cron.allow", "at.allow"):
        assert (tmp_path / name).read_text() == "root\n"
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644
    assert restrict_schedulers(tmp_path) == []  # a second start changes nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["at.allow", "cron.allow"]  # no temp file left


def test_an_operators_allow_file_keeps_its_users_but_never_a_tenants(tmp_path: Path) -> None:
    (tmp_path / "cron.allow").write_text("root\nbackup\nink-0123456789ab\n")
    (tmp_path / "at.allow").write_text("ink-0123456789ab\n")
    restrict_schedulers(tmp_path)
    assert (tmp_path / "cron.allow").read_text() == "root\nbackup\n"
    assert (tmp_path / "at.allow").read_text() == "root\n"  # emptied: root alone, never an empty list


@pytest.mark.asyncio
@requires("root", is_root(), "the provider writes /etc only as root")
async def test_the_provider_restricts_the_hosts_schedulers_at_start(make_provider) -> None:
    files = [Path("/etc", name) for name in ("cron.allow", "at.allow")]
    before = {p: p.read_text() for p in files if p.exists()}
    try:
        for p in files:  # as a fresh host: no allow file
            p.unlink(missing_ok=True)
        await make_provider()
        assert {p: p.read_text() for p in files} == {p: "root\n" for p in files}
        assert all(os.stat(p).st_mode & 0o777 == 0o644 and os.stat(p).st_uid == 0 for p in files)
    finally:
        for p, text in before.items():  # the host's own files, as they were
            p.write_text(text)
