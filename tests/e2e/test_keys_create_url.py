"""`inkmcp keys create`'s `claude mcp add` line names the URL the server really listens at.

Run without the server's environment (a new user's second terminal: no INKMCP_PORT), it printed the default port
8081 whatever port the server had, and the client the user set up with it could not connect. Now, with a server
running on the data dir, the line carries that server's URL (it records it in the data dir while it serves); with
none, the line says it assumed the default and how to pass the real address. Real `inkmcp serve`, real CLI
processes in a clean environment, and the printed key used over MCP at the printed URL.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from inkmcp.serve import ADDRESS_FILE, running_address
from tests.support import ServerProc, call, dispose_server, make_server, mcp_session

KEY = re.compile(r"dk_live_[A-Za-z0-9_\-]+")
LINE = re.compile(r"claude mcp add --transport http mcpdeploy (\S+) --header")


def keys_create(srv: ServerProc, account: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """As a user in another terminal: the data dir on the command line, none of the server's INKMCP_* settings."""
    env = {k: v for k, v in srv.env.items() if not k.startswith("INKMCP_")}
    argv = [srv.inkmcp, "keys", "create", "--account", account, "--data-dir", str(srv.data_dir), *extra]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=True, cwd="/tmp")


async def test_the_printed_line_names_the_running_servers_url() -> None:
    srv = make_server("inkmcp-keys-url-")
    try:
        assert srv.port != 8081
        srv.start()
        out = keys_create(srv, "carol")
        key, line = KEY.search(out.stdout), LINE.search(out.stdout)
        assert key and line, out.stdout
        assert line.group(1) == f"http://localhost:{srv.port}/mcp", out.stdout
        assert "assumes the default" not in out.stderr, out.stderr
        async with mcp_session(srv, key.group(0)) as s:  # the key works at that server
            assert (await call(s, "list_projects"))["projects"] == []
        assert srv.stop() == 0
        assert not (srv.data_dir / ADDRESS_FILE).exists()  # a stopped server leaves no address behind

        out = keys_create(srv, "dave")  # no server: the default, said as such, with the way to give the real one
        line = LINE.search(out.stdout)
        assert line and line.group(1) == "http://localhost:8081/mcp", out.stdout
        assert f"No `inkmcp serve` is running on {srv.data_dir}" in out.stderr and "--port" in out.stderr, out.stderr
        out = keys_create(srv, "erin", "--port", str(srv.port))
        line = LINE.search(out.stdout)
        assert line and line.group(1) == f"http://localhost:{srv.port}/mcp", out.stdout
        assert "assumes the default" not in out.stderr, out.stderr
    finally:
        dispose_server(srv)


def test_a_dead_servers_record_does_not_count(tmp_path: Path) -> None:
    """A server killed with SIGKILL leaves serve.json behind: its pid is gone (or reused by a process that does not
    hold the serve lock), so the record is ignored."""
    gone = subprocess.run(["/bin/sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    (tmp_path / ADDRESS_FILE).write_text(json.dumps({"pid": int(gone.stdout), "mcp_url": "http://localhost:1/mcp"}))
    assert running_address(tmp_path) is None
    mine = subprocess.Popen(["/bin/sleep", "30"])
    try:
        (tmp_path / ADDRESS_FILE).write_text(json.dumps({"pid": mine.pid, "mcp_url": "http://localhost:2/mcp"}))
        assert running_address(tmp_path) == (mine.pid, "http://localhost:2/mcp")
        (tmp_path / "serve.lock").write_text("1")  # the lock's holder is another process: a reused pid
        assert running_address(tmp_path) is None
    finally:
        mine.kill()
        mine.wait()
