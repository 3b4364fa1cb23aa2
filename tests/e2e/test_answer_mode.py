"""How /mcp answers, per request (inkmcp/mcp/server.py, issue 12 item 4), seen on the wire of a real `inkmcp serve`:
one JSON body for a quick call that asked for no progress, an SSE stream for a call with a progress token and for
every tool that may run long; sessions, the Host check and 401s unchanged on the direct route to the SDK."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from inkmcp.mcp.server import answers_as_json
from tests.support import ServerProc

PROTOCOL = "2025-06-18"


ACCOUNT = f"answer-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def server(local_server: ServerProc) -> ServerProc:
    """The session's local server (tests/e2e/conftest.py; suitetime: this module started one of its own, ~20 s of
    CI time, for settings it does not change), with an account of this module's own, so it has no projects
    whatever the other modules made there."""
    if ACCOUNT not in local_server.keys:
        local_server.create_key(ACCOUNT)
    return local_server


def headers(server: ServerProc, sid: str | None = None, **extra: str) -> dict[str, str]:
    h = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
         "Authorization": f"Bearer {server.keys[ACCOUNT]}", **extra}
    if sid:
        h.update({"Mcp-Session-Id": sid, "MCP-Protocol-Version": PROTOCOL})
    return h


async def session(c: httpx.AsyncClient, server: ServerProc) -> str:
    r = await c.post(server.mcp_url, headers=headers(server), json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    r = await c.post(server.mcp_url, headers=headers(server, sid),
                     json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert r.status_code == 202
    return sid


def messages(r: httpx.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an answer, whichever form it took."""
    if r.headers["content-type"].startswith("application/json"):
        return [r.json()]
    return [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:") and line[5:].strip()]


def call(name: str, call_id: int, token: str | None = None, **args: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": args}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return {"jsonrpc": "2.0", "id": call_id, "method": "tools/call", "params": params}


async def test_a_quick_call_without_progress_is_one_json_body(server: ServerProc) -> None:
    async with httpx.AsyncClient(timeout=30) as c:
        sid = await session(c, server)
        r = await c.post(server.mcp_url, headers=headers(server, sid), json=call("list_projects", 1))
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.headers
        assert r.headers["mcp-session-id"] == sid
        answer = r.json()
        assert answer["id"] == 1 and answer["result"]["isError"] is False
        assert answer["result"]["structuredContent"]["total"] == 0

        r = await c.post(server.mcp_url, headers=headers(server, sid), json={"jsonrpc": "2.0", "id": 2,
                                                                             "method": "tools/list"})
        assert r.headers["content-type"] == "application/json"
        assert "list_projects" in {t["name"] for t in r.json()["result"]["tools"]}

        # a tool error travels the same way: a result with isError and the tool's explanation
        r = await c.post(server.mcp_url, headers=headers(server, sid), json=call("list_services", 3,
                                                                                  project_name="nope"))
        assert r.headers["content-type"] == "application/json"
        assert r.json()["result"]["isError"] is True and "nope" in r.text


async def test_a_progress_token_or_a_long_tool_keeps_the_stream(server: ServerProc) -> None:
    async with httpx.AsyncClient(timeout=30) as c:
        sid = await session(c, server)
        r = await c.post(server.mcp_url, headers=headers(server, sid), json=call("list_projects", 1, token="p1"))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.headers
        assert [m["id"] for m in messages(r) if "id" in m] == [1]

        # wait_for_deployment may wait for a build: SSE (keep-alive pings) even when no progress was asked for
        r = await c.post(server.mcp_url, headers=headers(server, sid),
                         json=call("wait_for_deployment", 2, deployment_id="00000000-0000-0000-0000-000000000000"))
        assert r.headers["content-type"].startswith("text/event-stream"), r.headers
        assert messages(r)[-1]["result"]["isError"] is True


async def test_the_direct_route_keeps_sessions_host_check_and_401(server: ServerProc) -> None:
    async with httpx.AsyncClient(timeout=30) as c:
        sid = await session(c, server)
        r = await c.post(server.mcp_url, headers=headers(server, "0" * 32), json=call("list_projects", 1))
        assert r.status_code == 404  # an unknown session, as the SDK answers it
        r = await c.post(server.mcp_url, headers=headers(server, sid, Host="evil.example.com"),
                         json=call("list_projects", 2))
        assert r.status_code in (403, 421), r.text
        r = await c.post(server.mcp_url, headers=headers(server, sid, Authorization="Bearer dk_live_nope"),
                         json=call("list_projects", 3))
        assert r.status_code == 401 and "Bearer" in r.json()["message"]
        r = await c.post(server.mcp_url, headers={**headers(server, sid), "Accept": "text/html"},
                         json=call("list_projects", 4))
        assert r.status_code == 406  # the SDK's Accept check still runs on the JSON path
        r = await c.delete(server.mcp_url, headers=headers(server, sid))
        assert r.status_code == 200
        r = await c.post(server.mcp_url, headers=headers(server, sid), json=call("list_projects", 5))
        assert r.status_code == 404
        r = await c.post(server.mcp_url + "/", headers=headers(server), json=call("list_projects", 6))
        assert r.status_code == 307 and r.headers["location"].endswith("/mcp")  # Starlette's redirect, as before
        health = await c.get(f"http://127.0.0.1:{server.port}/healthz")
        assert health.json()["status"] == "ok"


@pytest.mark.parametrize(("message", "as_json"), [
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_projects", "arguments": {}}}, True),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, True),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
      "params": {"name": "list_projects", "arguments": {}, "_meta": {"progressToken": 7}}}, False),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {"progressToken": "t"}}}, False),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "deploy_app", "arguments": {}}}, False),
    ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "no_such_tool"}}, False),
    ({"jsonrpc": "2.0", "method": "notifications/initialized"}, False),
    ([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}], False),
])
def test_which_requests_are_answered_as_json(message: Any, as_json: bool) -> None:
    assert answers_as_json(json.dumps(message).encode()) is as_json
    assert answers_as_json(b"{not json") is False


async def test_a_json_rpc_batch_is_refused_with_what_to_send_instead(server: ServerProc) -> None:
    """MCP removed JSON-RPC batching in protocol 2025-06-18; a client that still batches (older SDKs, hand-written
    agents) must read in one line what to do, not the SDK's validation dump of every union member it tried."""
    async with httpx.AsyncClient(timeout=30) as c:
        sid = await session(c, server)
        batch = [call("list_projects", 1), {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}]
        r = await c.post(server.mcp_url, headers=headers(server, sid), json=batch)
        assert r.status_code == 400, r.text
        answer = r.json()
        assert answer["jsonrpc"] == "2.0" and answer["id"] is None
        assert answer["error"]["code"] == -32600  # Invalid Request
        message = answer["error"]["message"]
        assert "batch" in message and "one JSON-RPC message per POST" in message, message
        assert "validation error" not in message.lower() and len(message) < 300, message
        r = await c.post(server.mcp_url, headers=headers(server), json=[{
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}])
        assert r.status_code == 400 and "one JSON-RPC message per POST" in r.json()["error"]["message"], r.text
        # the session still works: the refusal consumed nothing
        r = await c.post(server.mcp_url, headers=headers(server, sid), json=call("list_projects", 3))
        assert r.status_code == 200 and r.json()["result"]["isError"] is False
