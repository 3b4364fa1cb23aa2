"""The control-plane Postgres drill: the factory's own backup script (inkmcp/infra/factory.py `backup_script`, run
unchanged) dumps a real PostgreSQL and rsyncs to a Storage Box stand-in (sshd on port 23 in a network namespace);
the machine is lost; `inkmcp dr restore-postgres` pulls the right dump back into a fresh server, and the restored
database's `pg_dump` output is byte-identical to the original's.

Point in time: dump A is taken, the box's snapshot plan freezes it, then A ages past the script's 7-day local
retention and the next run removes it (this host mirrored and pruned it) from the box's live directory; asking
for "the latest dump before T" (T between A and B) must find A in the snapshot through the Hetzner API
(zfs_enabled switched on for the read, back off after) while "latest" picks B from the live directory.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from inkmcp.dr.dumps import dump_time
from inkmcp.infra.factory import backup_script, shell
from inkmcp.infra.factory_config import FactoryConfig
from tests.dr.conftest import BOX_IP, BOX_UID, BOX_USER, Cluster, PgHost, World, make_pghost, pg_bin, run
from tests.dr.hetzner_standin import State, take_snapshot

pytestmark = pytest.mark.slow

SCHEMA = """
CREATE TABLE accounts (id serial PRIMARY KEY, name text UNIQUE NOT NULL, created timestamptz NOT NULL DEFAULT now());
CREATE TABLE api_keys (id serial PRIMARY KEY, account_id int NOT NULL REFERENCES accounts(id), digest bytea NOT NULL,
                       label text);
CREATE TABLE audit (id bigserial PRIMARY KEY, account_id int REFERENCES accounts(id), what jsonb NOT NULL);
CREATE INDEX audit_account ON audit (account_id);
CREATE VIEW account_keys AS SELECT a.name, count(k.id) AS keys FROM accounts a LEFT JOIN api_keys k
  ON k.account_id = a.id GROUP BY a.name;
INSERT INTO accounts (name) SELECT 'acct-' || g FROM generate_series(1, 50) g;
INSERT INTO api_keys (account_id, digest, label)
  SELECT g, sha256(('key' || g)::bytea), CASE WHEN g % 3 = 0 THEN NULL ELSE 'läbel ✓ ' || g END
  FROM generate_series(1, 50) g;
INSERT INTO audit (account_id, what) SELECT 1 + g % 50, jsonb_build_object('op', 'deploy', 'n', g)
  FROM generate_series(1, {rows}) g;
"""
AUDIT_ROWS = int(os.environ.get("INKMCP_DR_BENCH_AUDIT_ROWS", "2000"))
"""benchmarks/dr.py raises it to time the same drill on a realistic amount of data."""


@dataclass
class Drill:
    world: World
    old: PgHost
    new: PgHost
    fresh: Cluster
    plain_a: str
    plain_b: str
    name_a: str
    name_b: str
    between: datetime
    timings: dict[str, float]

    def restore(self, *args: str, database: str = "inkmcp", check: bool = True, new_process: bool = False) -> object:
        env = self.world.env(INKMCP_DR_BOX_KEY=str(self.new.installed_key), INKMCP_DR_PG_BIN=str(pg_bin()),
                             PGHOST=str(self.fresh.sock))
        return self.world.inkmcp("restore-postgres", "--into", database, "--work-dir",
                                 str(self.world.root / "work" / database), *args, env=env, check=check,
                                 new_process=new_process)


def _install(host: PgHost, world: World) -> None:
    """What pulumi's `backup-job` step runs on the host: `shell(backup_script(conf))` with the secrets on stdin."""
    conf = FactoryConfig.model_construct()
    key_b64 = base64.b64encode(world.backup_key.read_bytes()).decode()
    stdin = f"BACKUP_PRIVATE_KEY_B64={key_b64}\nSTORAGE_BOX_USER={BOX_USER}\nSTORAGE_BOX_HOST={BOX_IP}\n"
    host.sh(shell(backup_script(conf)), stdin=stdin)


@pytest.fixture(scope="module")
def drill(world: World, fresh_cluster: Cluster) -> Iterator[Drill]:
    timings: dict[str, float] = {}
    old_pg = Cluster(world.root / "pg-old", world.root / "sock-old")
    fresh = fresh_cluster
    try:
        old_pg.start()
        old_pg.psql("CREATE ROLE inkmcp LOGIN")
        old_pg.psql("CREATE DATABASE inkmcp OWNER inkmcp")
        old_pg.psql(SCHEMA.format(rows=AUDIT_ROWS), db="inkmcp", user="inkmcp")
        old = make_pghost(world, "pghost-old", old_pg.sock)
        _install(old, world)
        t0 = time.monotonic()
        old.sh("/usr/local/sbin/inkmcp-pg-backup")  # what the timer runs: dump A
        timings["backup"] = time.monotonic() - t0
        plain_a = old_pg.dump_text("inkmcp")
        (name_a,) = [p.name for p in old.backups.iterdir()]
        state = State(world.api_state, world.box_home)
        with state as data:  # the box's snapshot plan (04:00) freezes dump A
            take_snapshot(state, data, automatic=True)
        between = dump_time(name_a, "inkmcp")  # "latest at or before this" must be dump A
        assert between is not None
        while datetime.now(UTC).replace(microsecond=0) <= between:  # dump B must carry a later second
            time.sleep(0.01)
        old_pg.psql("UPDATE accounts SET name = name || '-b' WHERE id <= 10; DELETE FROM audit WHERE id % 7 = 0;"
                    "INSERT INTO accounts (name) VALUES ('late');", db="inkmcp", user="inkmcp")
        eight_days = time.time() - 8 * 86400
        os.utime(old.backups / name_a, (eight_days, eight_days))  # past the script's `find -mtime +7 -delete`
        old.sh("/usr/local/sbin/inkmcp-pg-backup")  # dump B; A leaves the host and, as this host pruned it, the box dir
        plain_b = old_pg.dump_text("inkmcp")
        (name_b,) = [p.name for p in old.backups.iterdir()]
        # The machine is lost.
        old_pg.stop()
        shutil.rmtree(old_pg.data)
        # Its replacement: a fresh cluster with the role and empty database of the factory's `postgres` step, and
        # the `backup-job` step re-run by pulumi (it installs the box key the restore uses).
        fresh.psql("CREATE ROLE inkmcp LOGIN")
        fresh.psql("CREATE DATABASE inkmcp OWNER inkmcp")
        new = make_pghost(world, "pghost-new", fresh.sock)
        _install(new, world)
        yield Drill(world, old, new, fresh, plain_a, plain_b, name_a, name_b, between, timings)
    finally:
        old_pg.stop()


def test_backup_script_installs_timer_and_mirrors_to_the_box(drill: Drill) -> None:
    w = drill.world
    calls = (drill.old.root / "systemctl.log").read_text().splitlines()
    assert calls == ["daemon-reload", "enable --now inkmcp-pg-backup.timer"]
    unit = (drill.old.root / "systemd" / "inkmcp-pg-backup.timer").read_text()
    assert "OnCalendar=*-*-* 02:30:00" in unit
    assert oct(drill.old.installed_key.stat().st_mode & 0o777) == "0o600"
    live = sorted(p.name for p in (w.box_home / "inkmcp-postgres").iterdir())
    assert live == [drill.name_b], "the second run must delete dump A (mirrored and pruned by this host) from the box"
    assert (w.box_home / "inkmcp-postgres" / drill.name_b).stat().st_uid == BOX_UID  # written by the box user
    (snap,) = w.state()["snapshots"]  # type: ignore[misc]
    frozen = w.api_state / "snapshots" / snap["name"] / "inkmcp-postgres" / drill.name_a
    assert frozen.read_bytes()[:5] == b"PGDMP"
    assert drill.name_a < drill.name_b


def test_list_dumps_shows_live_and_snapshot_copies(drill: Drill) -> None:
    w = drill.world
    r = w.inkmcp("list-dumps", env=w.env(INKMCP_DR_BOX_KEY=str(drill.new.installed_key)))
    rows = [line for line in r.stdout.splitlines() if ".dump" in line]
    (snap,) = w.state()["snapshots"][:1]  # type: ignore[index]
    assert drill.name_a in rows[0] and snap["name"] in rows[0], r.stdout  # oldest first, only in the snapshot
    assert drill.name_b in rows[-1] and "live" in rows[-1]
    assert w.state()["box"]["access_settings"]["zfs_enabled"] is False  # type: ignore[index]
    r = w.inkmcp("list-dumps", "--no-snapshots", env=w.env(INKMCP_DR_BOX_KEY=str(drill.new.installed_key)))
    assert drill.name_a not in r.stdout and drill.name_b in r.stdout


def test_restore_point_in_time_finds_the_dump_in_a_snapshot(drill: Drill) -> None:
    w = drill.world
    t0 = time.monotonic()
    r = drill.restore("--at", drill.between.isoformat(), new_process=True)  # the installed entry point
    drill.timings["restore-from-snapshot"] = time.monotonic() - t0
    out = r.stdout  # type: ignore[attr-defined]
    assert drill.name_a in out and re.search(r"searching \d+ snapshot", out), out
    assert drill.fresh.dump_text("inkmcp") == drill.plain_a
    state = w.state()
    assert state["violations"] == []
    toggles = [req["body"] for req in state["requests"]  # type: ignore[attr-defined]
               if req["path"].endswith("/actions/update_access_settings")]
    assert toggles == ['{"zfs_enabled": true}', '{"zfs_enabled": false}'] * (len(toggles) // 2) and toggles
    assert state["box"]["access_settings"]["zfs_enabled"] is False  # type: ignore[index]
    assert not (w.box_home / ".zfs").exists()


def test_restore_refuses_a_database_that_holds_tables(drill: Drill) -> None:
    drill.fresh.psql("CREATE DATABASE inkmcp_busy OWNER inkmcp;")
    drill.fresh.psql("CREATE TABLE accounts (id int PRIMARY KEY); INSERT INTO accounts VALUES (7);",
                     db="inkmcp_busy", user="inkmcp")
    before = drill.fresh.dump_text("inkmcp_busy")
    r = drill.restore(database="inkmcp_busy", check=False)
    assert r.returncode == 1  # type: ignore[attr-defined]
    assert "already holds 1 relation" in r.stderr and "fresh, empty database" in r.stderr  # type: ignore[attr-defined]
    assert drill.fresh.dump_text("inkmcp_busy") == before


def test_restore_latest_from_the_live_directory(drill: Drill) -> None:
    drill.fresh.psql("CREATE DATABASE inkmcp_latest OWNER inkmcp;")
    t0 = time.monotonic()
    r = drill.restore(database="inkmcp_latest")
    drill.timings["restore-latest"] = time.monotonic() - t0
    assert drill.name_b in r.stdout and "live" in r.stdout  # type: ignore[attr-defined]
    assert drill.fresh.dump_text("inkmcp_latest") == drill.plain_b
    assert drill.plain_a != drill.plain_b
    dump_bytes = (drill.world.box_home / "inkmcp-postgres" / drill.name_b).stat().st_size
    print(f"\nDR drill timings (s): {', '.join(f'{k}={v:.2f}' for k, v in drill.timings.items())}; "
          f"dump {dump_bytes} bytes")


def test_truncated_dump_is_refused_and_nothing_is_written(drill: Drill) -> None:
    w = drill.world
    later = datetime.now(UTC).strftime("inkmcp-%Y%m%dT%H%M%SZ.dump")
    good = (w.box_home / "inkmcp-postgres" / drill.name_b).read_bytes()
    cut = w.box_home / "inkmcp-postgres" / later
    cut.write_bytes(good[: len(good) * 2 // 3])
    os.chown(cut, BOX_UID, BOX_UID)
    drill.fresh.psql("CREATE DATABASE inkmcp_cut OWNER inkmcp;")
    try:
        r = drill.restore(database="inkmcp_cut", check=False)
    finally:
        cut.unlink()
    assert r.returncode == 1, r.stdout  # type: ignore[attr-defined]
    assert later in r.stdout and "pg_restore" in r.stderr  # type: ignore[attr-defined]
    count = drill.fresh.psql("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                             "WHERE n.nspname = 'public'", db="inkmcp_cut")
    assert count.strip() == "0", "a failed restore must leave the target database empty"


def test_a_key_the_box_does_not_know_cannot_read_the_dumps(drill: Drill, tmp_path: Path) -> None:
    """The attacker's side: a stranger's key gets no listing, no dump, and the restore says why."""
    stranger = tmp_path / "stranger"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger))
    drill.fresh.psql("CREATE DATABASE inkmcp_stranger OWNER inkmcp;")
    env = drill.world.env(INKMCP_DR_BOX_KEY=str(stranger), INKMCP_DR_PG_BIN=str(pg_bin()),
                          PGHOST=str(drill.fresh.sock))
    r = drill.world.inkmcp("restore-postgres", "--into", "inkmcp_stranger", "--no-snapshots", "--work-dir",
                           str(tmp_path / "work"), env=env, check=False)
    assert r.returncode == 1 and "Permission denied" in r.stderr, r.stderr
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_restore_refuses_while_the_nightly_backup_timer_is_active(drill: Drill, tmp_path: Path) -> None:
    """systemd is not here: a `systemctl` on PATH answers `is-active` for the timer as systemd would (exit 0)."""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "systemctl").write_text(f'#!/bin/sh\necho "$*" > {tmp_path}/asked\nexit 0\n')
    (stub / "systemctl").chmod(0o755)
    env = drill.world.env(INKMCP_DR_BOX_KEY=str(drill.new.installed_key), INKMCP_DR_PG_BIN=str(pg_bin()),
                          PGHOST=str(drill.fresh.sock), PATH=f"{stub}:{os.environ['PATH']}")
    r = drill.world.inkmcp("restore-postgres", "--work-dir", str(tmp_path / "work"), env=env, check=False)
    assert r.returncode == 1 and "systemctl stop inkmcp-pg-backup.timer" in r.stderr, r.stderr
    assert (tmp_path / "asked").read_text().split() == ["is-active", "--quiet", "inkmcp-pg-backup.timer"]
    assert not (tmp_path / "work").exists()
    # A drill into a scratch database may run next to the live nightly job.
    (tmp_path / "asked").unlink()
    drill.fresh.psql("CREATE DATABASE inkmcp_drill OWNER inkmcp;")
    r = drill.world.inkmcp("restore-postgres", "--into", "inkmcp_drill", "--work-dir", str(tmp_path / "work"),
                           env=env, check=False)
    assert r.returncode == 1 and "the postgres user cannot reach it" in r.stderr, r.stderr  # tmp_path is 0700
    r = drill.world.inkmcp("restore-postgres", "--into", "inkmcp_drill", "--work-dir",
                           str(drill.world.root / "work" / "drill"), env=env)
    assert not (tmp_path / "asked").exists() and drill.name_b in r.stdout


def test_why_the_timer_must_wait_a_rebuilt_hosts_first_run_makes_the_newest_dump_empty(drill: Drill) -> None:
    """Evidence for the runbook's order: the replacement host's own nightly job, run before anything else, keeps
    the old host's dumps on the box (a host deletes there only dumps it mirrored itself and pruned since) but adds
    a dump of its near-empty database, which is now the newest: the one "latest" would restore."""
    live = drill.world.box_home / "inkmcp-postgres"
    assert sorted(p.name for p in live.iterdir()) == [drill.name_b]
    drill.new.sh("/usr/local/sbin/inkmcp-pg-backup")
    (mine,) = [p.name for p in drill.new.backups.iterdir()]
    assert sorted(p.name for p in live.iterdir()) == sorted([drill.name_b, mine]), "dump B left the live directory"
    assert dump_time(mine, "inkmcp") > dump_time(drill.name_b, "inkmcp")  # type: ignore[operator]
