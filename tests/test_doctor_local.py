"""`inkmcp doctor` with no Coolify settings: the local provider's checks, through the command an operator runs.

Each broken setup here is real (a PostgreSQL URL nobody answers, a taken port, a missing nginx, a reserve the disk
cannot hold, a process without CAP_SYS_ADMIN whose tenant sandbox cannot make its mount namespace, a data dir
under /var/tmp): the doctor must fail its row with the fix and exit 1. A fit machine passes every row, exit 0, and
the embedded control-plane server it had to start for the check is stopped again.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from inkmcp.store.embedded import EmbeddedPostgres
from tests.requirements import is_root, requires
from tests.support import REPO, free_port, initdb_template, traversable_tmpdir

pytestmark = requires("root", is_root(), "the local provider's sandbox checks need root")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = traversable_tmpdir("inkmcp-doctor-")
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


def failed(rows: dict[str, tuple[str, str, str]]) -> dict[str, tuple[str, str, str]]:
    """The rows that failed, and the port rows (the whole table is cut short in pytest's message: CI failures with
    exit 1 did not show which row failed)."""
    return {k: v for k, v in rows.items() if v[0] == "fail" or k in ("MCP port", "proxy port", "inkmcp serve")}


def _quiet_port() -> int:
    """A free port below the kernel's ephemeral range (and the provider's app ports, 20000-30000): `free_port`'s
    ephemeral port can be handed to any outgoing connection before the doctor checks it (CI run 31's race), and
    the fit machine's "port free" row would then fail for a reason that is not the machine's."""
    for _ in range(100):
        port = random.randint(10000, 15999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INKMCP_")}
    return {**env, "INKMCP_DATA_DIR": str(data_dir), "INKMCP_PORT": str(_quiet_port()),
            "INKMCP_PROXY_PORT": str(_quiet_port()), "COLUMNS": "400", **extra}  # fmt: skip


def doctor(env: dict[str, str], *prefix: str) -> tuple[int, dict[str, tuple[str, str, str]]]:
    """Run `inkmcp doctor`; its exit code and its rows as {check: (result, detail, fix)}."""
    done = subprocess.run([*prefix, sys.executable, "-m", "inkmcp.cli", "doctor"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO)  # fmt: skip
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 4 and cells[0]:
            rows[cells[0]] = (cells[1], cells[2], cells[3])
    assert rows, done.stdout + done.stderr
    return done.returncode, rows


def test_a_fit_machine_passes_and_the_embedded_server_is_stopped_again(data_dir: Path) -> None:
    control = EmbeddedPostgres(data_dir / "pg" / "control")
    (data_dir / "pg").mkdir(parents=True)  # --- suitefast: the process's initdb template (the product's own initdb)
    subprocess.run(["cp", "-a", "--reflink=auto", str(initdb_template()), str(control.pgdata)], check=True)
    control.start()  # an installation whose serve is stopped: the doctor starts the server to ask it, then stops it
    control.stop()
    code, rows = doctor(_env(data_dir))
    assert code == 0, failed(rows)
    assert {r[0] for r in rows.values()} <= {"ok", "warn"}, rows  # the proxy warns without InkMCP's module
    for name in ("root", "data dir", "MCP port", "proxy port", "control-plane PostgreSQL", "cgroups",
                 "tenant sandbox", "disk per project", "free disk", "git", "tenant python"):  # fmt: skip
        assert rows[name][0] == "ok", (name, rows[name])
    assert "PostgreSQL 18" in rows["control-plane PostgreSQL"][1] and "answers" in rows["control-plane PostgreSQL"][1]
    assert "ran as nobody, private /tmp, in cgroup inkmcp/doctor-" in rows["tenant sandbox"][1]
    assert "mounted, written and removed" in rows["disk per project"][1]
    assert not [p for p in data_dir.iterdir() if p.name.startswith(".inkmcp-doctor-disk-")]  # the probe is gone
    assert control.pid is None  # stopped again: the doctor leaves the installation as it found it

    control.start()  # serve's server, running: adopted and left running
    try:
        code, rows = doctor(_env(data_dir))
        assert code == 0 and "answers" in rows["control-plane PostgreSQL"][1], failed(rows)
        assert control.pid is not None
    finally:
        control.stop()


def test_a_broken_machine_names_each_failure_and_its_fix(data_dir: Path) -> None:
    with socket.socket() as closed, socket.socket() as squatter:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        env = _env(
            data_dir,
            INKMCP_DATABASE_URL=f"postgresql://inkmcp:pw@127.0.0.1:{closed.getsockname()[1]}/inkmcp",
            INKMCP_PROXY_PORT=str(squatter.getsockname()[1]),
            INKMCP_PROXY_NGINX="/nonexistent/nginx",
            INKMCP_DISK_RESERVE_MB=str(2**40),
            INKMCP_TENANT_PYTHON="/nonexistent/python3",
        )
        code, rows = doctor(env)
    assert code == 1, rows
    expected = {
        "control-plane PostgreSQL": ("does not answer", "check INKMCP_DATABASE_URL"),
        "proxy port": ("Address already in use", "set INKMCP_PROXY_PORT"),
        "local proxy (nginx module)": ("no nginx at /nonexistent/nginx", "INKMCP_PROXY_NGINX"),
        "free disk": ("the control plane's reserve is already taken", "INKMCP_DISK_RESERVE_MB"),
        "tenant python": ("/nonexistent/python3 is not an executable", "INKMCP_TENANT_PYTHON"),
    }
    for name, (detail, fix) in expected.items():
        result, said, how = rows[name]
        assert result == "fail" and detail in said and fix in how, (name, rows[name])
    assert rows["MCP port"][0] == "ok" and rows["tenant sandbox"][0] == "ok"  # only what is broken fails


def test_a_sandbox_that_cannot_make_its_mount_namespace_fails(data_dir: Path) -> None:
    """The doctor run without CAP_SYS_ADMIN (a container that dropped it): tenants' processes could not get their
    private /tmp, and the doctor's probe, started the way the provider starts them, says so."""
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is missing"
    code, rows = doctor(_env(data_dir), setpriv, "--inh-caps=-sys_admin", "--bounding-set=-sys_admin")
    assert code == 1, rows
    result, said, fix = rows["tenant sandbox"]
    assert result == "fail" and "private mount namespace: Operation not permitted" in said, rows["tenant sandbox"]
    assert "CAP_SYS_ADMIN" in fix
    result, said, _ = rows["disk per project"]  # nor could a project's filesystem be mounted
    assert result == "fail" and "a project's filesystem cannot be made" in said, rows["disk per project"]


def test_a_data_dir_tenants_cannot_reach_fails_first() -> None:
    code, rows = doctor(_env(Path("/var/tmp/inkmcp-doctor-never-made")))
    assert code == 1
    assert rows["data dir"][0] == "fail" and "INKMCP_DATA_DIR=/var/lib/inkmcp" in rows["data dir"][2]
    assert rows["control-plane PostgreSQL"][0] == "skipped" and rows["tenant sandbox"][0] == "skipped"
    assert not Path("/var/tmp/inkmcp-doctor-never-made").exists()


def test_coolify_settings_select_the_coolify_checks() -> None:
    """A URL without a token is refused up front (exit 2); the Coolify checks themselves run against the stand-in
    in tests/coolify/test_doctor.py."""
    env = {**_env(Path("/nonexistent")), "INKMCP_COOLIFY_URL": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-m", "inkmcp.cli", "doctor"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=REPO)  # fmt: skip
    assert done.returncode == 2 and "--url needs --token" in done.stderr, done.stdout + done.stderr


def test_ports_held_by_this_data_dirs_serve_are_not_a_failure(data_dir: Path) -> None:
    """While a serve holds the data dir (its flock on serve.lock, taken here the way `app._hold_serve_lock` takes
    it), its ports are in use by it: the doctor names the holder and does not fail them."""
    import fcntl

    data_dir.mkdir(parents=True)
    fd = os.open(data_dir / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    with socket.socket() as mcp:
        mcp.bind(("127.0.0.1", 0))
        mcp.listen()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, str(os.getpid()).encode())
            code, rows = doctor(_env(data_dir, INKMCP_PORT=str(mcp.getsockname()[1])))
        finally:
            os.close(fd)
        assert rows["inkmcp serve"][1] == f"running on {data_dir} (pid {os.getpid()})", rows["inkmcp serve"]
        assert "MCP port" not in rows and "proxy port" not in rows and code == 0, failed(rows)
        code, rows = doctor(_env(data_dir, INKMCP_PORT=str(mcp.getsockname()[1])))  # lock gone: the port is taken
    assert code == 1 and rows["MCP port"][0] == "fail" and "not running" in rows["inkmcp serve"][1], rows
