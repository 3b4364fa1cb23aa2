from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from inkmcp.store.embedded import EmbeddedPostgres
from tests.requirements import requires

from .conftest import EmbeddedPgFactory


def _alive(pid: int) -> bool:
    """Zombies count as dead: in containers PID 1 may be slow to reap the detached postmaster."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _query(url: str, q: str = "SELECT 1") -> object:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(q).fetchone()
        return row[0] if row else None


def test_socket_only_server_has_no_tcp_listener(control_pg: EmbeddedPostgres) -> None:
    assert control_pg.pid is not None
    url = control_pg.url(driver=None).get_secret_value()
    assert "host=" in url and "@/" in url
    assert _query(url, "SHOW listen_addresses") == ""
    assert _query(url, "SELECT current_setting('server_version_num')::int / 10000") == 18


def test_start_adopts_running_server(control_pg: EmbeddedPostgres) -> None:
    pid = control_pg.pid
    again = EmbeddedPostgres(control_pg.pgdata)  # another handle, e.g. another process
    t0 = time.monotonic()
    again.start()
    assert time.monotonic() - t0 < 1.0
    assert again.pid == pid


def test_tcp_password_auth(tenant_pg: EmbeddedPostgres) -> None:
    url = tenant_pg.url(driver=None).get_secret_value()
    assert url.startswith(f"postgresql://postgres:{tenant_pg.password_file.read_text().strip()}@127.0.0.1:")
    assert _query(url, "SELECT inet_server_addr()::text") == "127.0.0.1/32"
    wrong = f"host=127.0.0.1 port={tenant_pg.port} user=postgres password=nope dbname=postgres"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _query(wrong)
    no_pw = f"host=127.0.0.1 port={tenant_pg.port} user=postgres dbname=postgres"
    with pytest.raises(psycopg.OperationalError):
        _query(no_pw)
    assert stat.S_IMODE(tenant_pg.password_file.stat().st_mode) == 0o600


def test_control_and_tenant_coexist(control_pg: EmbeddedPostgres, tenant_pg: EmbeddedPostgres) -> None:
    assert control_pg.pgdata.parent == tenant_pg.pgdata.parent
    assert control_pg.pid != tenant_pg.pid
    assert _query(control_pg.url(driver=None).get_secret_value()) == 1
    assert _query(tenant_pg.url(driver=None).get_secret_value()) == 1


def test_stop_start_restart(embedded_pg_factory: EmbeddedPgFactory) -> None:
    pg = embedded_pg_factory("restart", tcp=True)
    first = pg.pid
    pg.stop()
    assert pg.pid is None
    assert first is not None and not _alive(first)
    pg.stop()  # idempotent
    t0 = time.monotonic()
    pg.start()
    assert time.monotonic() - t0 < 3.0
    assert pg.pid not in (None, first)
    assert _query(pg.url(driver=None).get_secret_value()) == 1


def test_recovers_from_crash_and_stale_pid(embedded_pg_factory: EmbeddedPgFactory) -> None:
    pg = embedded_pg_factory("crash")
    url = pg.url(driver=None).get_secret_value()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE survivor (x int); INSERT INTO survivor VALUES (42)")

    # 1. kill -9: postmaster.pid stays behind, orphans may still hold shared memory for a moment.
    pid = pg.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (pg.pgdata / "postmaster.pid").exists()
    pg.start()
    assert pg.pid not in (None, pid)
    assert _query(url, "SELECT x FROM survivor") == 42

    # 2. stale pid file whose PID now belongs to an unrelated live process (container restart).
    pid_file = pg.pgdata / "postmaster.pid"
    saved = pid_file.read_text().splitlines()
    pg.stop()
    saved[0] = str(os.getpid())
    pid_file.write_text("\n".join(saved) + "\n")
    assert pg.pid is None  # not adopted: that PID is not our postmaster
    pg.start()
    assert pg.pid not in (None, os.getpid())
    assert _query(url, "SELECT x FROM survivor") == 42


def test_long_pgdata_path_uses_short_socket_dir(embedded_pg_factory: EmbeddedPgFactory) -> None:
    pg = embedded_pg_factory(f"{'d' * 60}/{'e' * 40}/pgdata")
    assert pg.socket_dir != pg.pgdata
    assert len(str(pg.socket_dir)) < 60
    assert _query(pg.url(driver=None).get_secret_value()) == 1


@requires("root", os.geteuid() == 0, "the inkmcp-pg system user is only used when running as root")
def test_runs_as_system_user_when_root(control_pg: EmbeddedPostgres) -> None:
    assert control_pg.pid is not None
    assert psutil.Process(control_pg.pid).username() == "inkmcp-pg"
    assert Path(control_pg.pgdata).stat().st_uid == psutil.Process(control_pg.pid).uids().real
