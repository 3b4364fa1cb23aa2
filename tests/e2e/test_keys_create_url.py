"""`inkmcp keys create`'s `claude mcp add` line names the URL the server really listens at.

Run without the server's environment (a new user's second terminal: no INKMCP_PORT), it printed the default port
8081 whatever port the server had, and the client the user set up with it could not connect. Now, with a server
running on the data dir, the line carries that server's URL (it records it in the data dir while it serves); with
none, the line says it assumed the default and how to pass the real address. Real `inkmcp serve`, real CLI
processes in a clean environment, and the printed key used over MCP at the printed URL.

stdio beside a running `inkmcp serve` on the same data dir: the MCP client shows why, not "Connection closed".
One serving InkMCP per data dir (two would supervise the same apps), so `inkmcp serve --stdio` there cannot
start. It used to print the reason to stderr and exit, and a client (Claude Code, the SDK's) showed only
"Connection closed". Now it answers the client's `initialize` with a JSON-RPC error carrying the reason and the
way out (the running server's HTTP URL and the command for a key), and exits 1 when the client hangs up. With the
official MCP client over a real stdio pipe, beside a real `inkmcp serve`.

Both checks need a plain server on a data dir of its own and nothing else of it (each uses accounts of its own),
so they share one (mender7: they were two files that each started and stopped one); a test that finds it stopped
(the URL test stops it on purpose) starts it again.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from inkmcp.serve_address import ADDRESS_FILE, running_address
from tests.support import INKMCP, ServerProc, call, dispose_server, make_server, mcp_session

KEY = re.compile(r"dk_live_[A-Za-z0-9_\-]+")
LINE = re.compile(r"claude mcp add --transport http mcpdeploy (\S+) --header")


def keys_create(srv: ServerProc, account: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """As a user in another terminal: the data dir on the command line, none of the server's INKMCP_* settings."""
    env = {k: v for k, v in srv.env.items() if not k.startswith("INKMCP_")}
    argv = [srv.inkmcp, "keys", "create", "--account", account, "--data-dir", str(srv.data_dir), *extra]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=True, cwd="/tmp")


@pytest.fixture(scope="module")
def plain_server() -> Iterator[ServerProc]:
    srv = make_server("inkmcp-keys-url-")
    try:
        yield srv
    finally:
        dispose_server(srv)


@pytest.fixture
def srv(plain_server: ServerProc) -> ServerProc:
    """The module's server, running when the test starts."""
    if plain_server.proc is None:
        plain_server.start()
    return plain_server


# first: the URL test stops the server (which the next test here would start again)
async def test_stdio_beside_a_running_serve_tells_the_client_why(srv: ServerProc) -> None:
    errlog = srv.data_dir.parent / "stdio-stderr.log"
    try:
        params = StdioServerParameters(command=INKMCP, args=["serve", "--stdio", "--account", "erin"], env=srv.env)
        with errlog.open("w") as stderr, anyio.fail_after(90):
            async with stdio_client(params, errlog=stderr) as (read, write), ClientSession(read, write) as s:
                with pytest.raises(Exception) as refused:
                    await s.initialize()
                message = str(refused.value)
                assert "inkmcp cannot start" in message and "already serving" in message, message
                assert f"http://localhost:{srv.port}/mcp" in message and "keys create" in message, message
                with pytest.raises(Exception) as again:
                    await s.list_tools()  # every later request gets the same answer, not a hang
                assert "already serving" in str(again.value), again.value
        assert "already serving" in errlog.read_text()  # the operator's stderr still has it

        # The bare protocol, as any client speaks it: one initialize, then stdin closes. One JSON-RPC error for
        # request 1 on stdout, and the process ends (exit 1) instead of waiting on a transport nobody reads.
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
        raw = await asyncio.to_thread(subprocess.run, [INKMCP, "serve", "--stdio"], input=json.dumps(init) + "\n",
                                      env=srv.env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert raw.returncode == 1, raw
        answer = json.loads(raw.stdout)
        assert answer["id"] == 1 and "already serving" in answer["error"]["message"] and "result" not in answer, raw
        # a stdio client configured with another port (its own INKMCP_PORT): the key line still makes a key for the
        # running server, whose URL `keys create` reads from the data dir; the stdio process's port is not in it
        other = {**srv.env, "INKMCP_PORT": str(srv.port + 1)}
        raw = await asyncio.to_thread(subprocess.run, [INKMCP, "serve", "--stdio"], input=json.dumps(init) + "\n",
                                      env=other, capture_output=True, text=True, timeout=60)  # fmt: skip
        message = json.loads(raw.stdout)["error"]["message"]
        assert f"http://localhost:{srv.port}/mcp" in message and "keys create" in message, message
        assert "INKMCP_PORT" not in message and f"--data-dir {srv.data_dir}" in message, message
        async with mcp_session(srv, srv.create_key("frank")) as s:  # the running server was not disturbed
            assert (await call(s, "list_projects"))["projects"] == []
    finally:
        errlog.unlink(missing_ok=True)


async def test_the_printed_line_names_the_running_servers_url(srv: ServerProc) -> None:
    assert srv.port != 8081
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
