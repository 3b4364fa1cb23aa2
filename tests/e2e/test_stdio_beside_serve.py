"""stdio beside a running `inkmcp serve` on the same data dir: the MCP client shows why, not "Connection closed".

One serving InkMCP per data dir (two would supervise the same apps), so `inkmcp serve --stdio` there cannot
start. It used to print the reason to stderr and exit, and a client (Claude Code, the SDK's) showed only
"Connection closed". Now it answers the client's `initialize` with a JSON-RPC error carrying the reason and the
way out (the running server's HTTP URL and the command for a key), and exits 1 when the client hangs up. With the
official MCP client over a real stdio pipe, beside a real `inkmcp serve`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.support import INKMCP, call, dispose_server, make_server, mcp_session


async def test_stdio_beside_a_running_serve_tells_the_client_why() -> None:
    srv = make_server("inkmcp-stdio-beside-")
    errlog = srv.data_dir.parent / "stdio-stderr.log"
    try:
        srv.start()
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
        async with mcp_session(srv, srv.create_key("frank")) as s:  # the running server was not disturbed
            assert (await call(s, "list_projects"))["projects"] == []
    finally:
        dispose_server(srv)
        shutil.rmtree(srv.data_dir.parent, ignore_errors=True)
