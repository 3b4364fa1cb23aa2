"""The agent contract over the real streamable HTTP transport: discovery, auth, bad input."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import local_only
from tests.e2e.probes import metric_value, store_query
from tests.support import ServerProc, call, call_error, mcp_session

pytestmark = pytest.mark.asyncio


async def raw_tools_list(server: ServerProc) -> str:
    """The tools/list response exactly as the server sends it (the JSON-RPC message from the SSE frame)."""
    headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {server.keys['alice']}"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    async with httpx.AsyncClient(headers=headers) as c:
        r = await c.post(server.mcp_url, json=init)
        assert r.status_code == 200, r.text
        sid = r.headers.get("mcp-session-id")
        h = {"mcp-session-id": sid} if sid else {}
        await c.post(server.mcp_url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h)
        r = await c.post(server.mcp_url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=h)
    body = r.text
    if body.lstrip().startswith("{"):
        return body
    return next(line[5:].strip() for line in body.splitlines() if line.startswith("data:") and '"tools"' in line)


TOOLS_LIST_BUDGET = 5000
"""Characters of the whole tools/list JSON-RPC message, as sent: every agent carries it in its context (~1,250
tokens). Issue 13 item 6. It was 6,497 with backups, get_usage and auto_deploy; 5,000 again after the constant
outputSchema went, the two backup tools became one and deploy_app's texts were cut (the session notes have the
per-tool table)."""

# Every tool an agent can call, with the hints a client decides on (confirmation, auto-approval, retries):
# (readOnlyHint, destructiveHint, idempotentHint) after the spec's defaults (False, True, False) are applied;
# destructiveHint and idempotentHint mean nothing for a read-only tool, so they are not checked there.
HINTS = {
    "ensure_project": (False, False, True),
    "list_projects": (True, None, None),
    "deploy_app": (False, False, True),
    "wait_for_deployment": (True, None, None),
    "list_services": (True, None, None),
    "get_logs": (True, None, None),
    "update_env_vars": (False, False, True),
    "list_env_vars": (True, None, None),
    "provision_database": (False, False, True),
    "get_database_credentials": (True, None, None),
    "get_usage": (True, None, None),
    "delete": (False, True, True),
    "database_backups": (False, True, False),  # create=true deletes the oldest dumps past the kept count
    "restore_database_backup": (False, True, True),
}


STRICT_KEYS = {"type", "properties", "required", "items", "enum", "description"}


def strict_client_refuses(schema: Any, at: str = "") -> list[str]:
    """What in an input schema a strict client refuses, written here independently of inkmcp.mcp.schema: Gemini's
    function declarations (an OpenAPI 3.0 subset) take one string `type` per node and refuse unknown keys such as
    `additionalProperties` ("Unknown name ...") or a type list ("Proto field is not repeating"); anyOf/oneOf/allOf
    are refused by others."""
    if not isinstance(schema, dict):
        return [f"{at}: {schema!r}"]
    out = [f"{at}/{key}" for key in set(schema) - STRICT_KEYS]
    if not isinstance(schema.get("type"), str):
        out.append(f"{at}: type {schema.get('type')!r}")
    for name, sub in schema.get("properties", {}).items():
        out += strict_client_refuses(sub, f"{at}/{name}")
    if "items" in schema:
        out += strict_client_refuses(schema["items"], f"{at}/items")
    return out


def sizes_table(tools: list[dict[str, Any]]) -> str:
    """Each tool's share of tools/list (its compact JSON), biggest first: who grew, when the budget fails."""
    sizes = {t["name"]: len(json.dumps(t, separators=(",", ":"))) for t in tools}
    rows = [f"  {name:<26}{n:>6}   description {len(t.get('description', '')):>4}"
            for (name, n), t in sorted(zip(sizes.items(), tools, strict=True), key=lambda x: -x[0][1])]
    return "\n".join(["per tool (characters of compact JSON):", *rows, f"  {'sum':<26}{sum(sizes.values()):>6}"])


async def test_tools_list_fits_the_budget(server: ServerProc) -> None:
    message = await raw_tools_list(server)
    tools = json.loads(message)["result"]["tools"]
    assert len(message) < TOOLS_LIST_BUDGET, (
        f"tools/list is {len(message)} characters of JSON on the wire, over the budget of {TOOLS_LIST_BUDGET}. "
        f"Cut descriptions (explanations an agent needs only when something goes wrong belong in the tool's error "
        f"messages) before raising the budget.\n{sizes_table(tools)}")
    assert len(json.dumps(tools, separators=(",", ":"))) < TOOLS_LIST_BUDGET
    print(f"tools/list: {len(message)} characters on the wire\n{sizes_table(tools)}")  # shown with -rP or -s


async def test_tools_list_is_annotated_self_explanatory_and_strict(server: ServerProc) -> None:
    async with mcp_session(server, server.keys["alice"]) as s:
        tools = (await s.list_tools()).tools
        by_name = {t.name: t for t in tools}
        assert set(by_name) == set(HINTS), "a tool was added or removed: give it a row in HINTS (and mind the budget)"
        for t in tools:
            assert t.description and len(t.description.split()) >= 2, (t.name, t.description)  # a one-line purpose
            a = t.annotations
            assert a is not None, t.name
            read_only, destructive, idempotent = HINTS[t.name]
            assert bool(a.read_only_hint) is read_only, t.name
            if not read_only:  # stated explicitly, not left to the spec's default, so no client has to know it
                assert a.destructive_hint is destructive, t.name
                assert bool(a.idempotent_hint) is idempotent, t.name
            assert t.input_schema["type"] == "object", t.name
            assert set(t.input_schema.get("required", [])) <= set(t.input_schema.get("properties", {})), t.name
            # no outputSchema (it was the same {"type": "object"} on every tool); results stay structured below
            assert t.output_schema is None, t.name
        assert by_name["deploy_app"].input_schema["required"] == ["repo_url"]
        assert by_name["restore_database_backup"].input_schema["required"] == ["project_name", "backup_id", "confirm"]
        # every schema inside the subset the strictest clients take (Gemini's function declarations refuse a list as
        # `type` and `additionalProperties`; some clients refuse anyOf): env_vars' values were ["string", "null"]
        for t in tools:
            assert strict_client_refuses(t.input_schema) == [], (t.name, t.input_schema)
        assert by_name["update_env_vars"].input_schema["properties"]["env_vars"] == {"type": "object"}
        assert by_name["update_env_vars"].input_schema["properties"]["unset"] == {
            "type": "array", "items": {"type": "string"}}
        assert by_name["update_env_vars"].input_schema["required"] == ["project_name"]
        # deploy_app's database shows the list form of `type` only, and no tier (provision_database has it): both
        # are still understood, as the README and the server's instructions show them (refused here on the tier
        # value alone, before anything is made)
        database = by_name["deploy_app"].input_schema["properties"]["database"]
        assert database["properties"]["type"]["items"]["enum"] == ["postgres", "byo", "redis"]
        msg = await call_error(s, "deploy_app", repo_url="https://example.invalid/x.git",
                               database={"type": "postgres", "tier": "gold"})
        assert "Argument 'database.tier'" in msg and "'standard'" in msg, msg
        # results: structuredContent (typed on the server side), and the same JSON as text for text-only clients
        listed = await s.call_tool("list_projects", {})
        assert not listed.is_error and set(listed.structured_content) >= {"projects", "total", "truncated"}
        assert json.loads(listed.content[0].text) == listed.structured_content


async def test_explanations_left_to_errors_name_real_tools(server: ServerProc) -> None:
    """What descriptions no longer say (to fit the budget) an error says when it matters, naming a call that exists:
    deleting a project that holds a database."""
    project = f"keepdb-{uuid.uuid4().hex[:6]}"
    async with mcp_session(server, server.keys["alice"]) as s:
        names = {t.name for t in (await s.list_tools()).tools}
        await call(s, "ensure_project", name=project)
        await call(s, "provision_database", project_name=project)
        msg = await call_error(s, "delete", project_name=project, confirm=project)
        assert "delete_database=true" in msg and f"delete(project_name={project!r}, service_name=" in msg, msg
        assert "delete" in names and "delete_service" not in names
        assert (await call(s, "delete", project_name=project, confirm=project, delete_database=True))[
            "database_deleted"] is True


async def test_missing_invalid_and_revoked_keys_get_401(server: ServerProc) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with httpx.AsyncClient() as c:
        r = await c.post(server.mcp_url, json=body, headers=headers)
        assert r.status_code == 401 and "Bearer" in r.json()["message"]
        r = await c.post(server.mcp_url, json=body, headers={**headers, "Authorization": "Bearer dk_live_nope"})
        assert r.status_code == 401
        health = await c.get(f"http://127.0.0.1:{server.port}/healthz")
        assert health.json()["status"] == "ok"
    key = server.create_key("carol")
    async with mcp_session(server, key) as s:
        assert (await call(s, "list_projects"))["total"] == 0
    server.cli("keys", "revoke", key)
    async with httpx.AsyncClient() as c:
        r = await c.post(server.mcp_url, json=body, headers={**headers, "Authorization": f"Bearer {key}"})
        assert r.status_code == 401


async def test_dns_rebinding_protection_rejects_foreign_host(server: ServerProc) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {server.keys['alice']}",
               "Host": "evil.example.com"}
    async with httpx.AsyncClient() as c:
        r = await c.post(server.mcp_url, json=body, headers=headers)
    assert r.status_code in (403, 421), r.text


async def test_invalid_names_unknown_args_and_unknown_project(server: ServerProc) -> None:
    async with mcp_session(server, server.keys["alice"]) as s:
        msg = await call_error(s, "ensure_project", name="My_App")
        # ensure_project's argument is `name`: the error names it so (it said 'project_name' until a new user saw it)
        assert "Argument 'name'" in msg and "lowercase" in msg and "my-app" in msg
        msg = await call_error(s, "ensure_project", name="ok-name", colour="blue")
        assert "colour" in msg and "not accepted" in msg and "name" in msg
        msg = await call_error(s, "list_services", project_name="does-not-exist")
        assert "no project named 'does-not-exist'" in msg and "list_projects" in msg
        msg = await call_error(s, "get_logs", project_name="x", tail=10_000)
        assert "tail" in msg
        msg = await call_error(s, "delete", project_name="x", confirm="y")
        assert "confirm" in msg


async def test_union_argument_error_is_one_line_naming_the_argument(server: ServerProc) -> None:
    """deploy_app's `database.type` takes one type or a list of them; a wrong value used to come back as
    "Argument 'database.type.literal['postgres','byo','redis']': ... Argument 'database.type.list[literal[...]]': ..."
    (pydantic's union member tags in the argument's name). It must name `database.type` once, with the choices."""
    async with mcp_session(server, server.keys["alice"]) as s:
        msg = await call_error(s, "deploy_app", repo_url="https://example.invalid/x.git", database={"type": "mysql"})
        assert msg.count("Argument 'database.type'") == 1 and "literal[" not in msg, msg
        assert "'postgres', 'byo' or 'redis'" in msg and "list" in msg and "'mysql'" in msg, msg
        # A list with bad items: still one line for the argument, naming each bad item, and no word about the
        # scalar form the agent did not use (it came back as "Argument 'database.type'" + "'database.type.0'").
        msg = await call_error(s, "deploy_app", repo_url="https://example.invalid/x.git",
                               database={"type": ["postgres", "x", 3]})  # fmt: skip
        assert msg.count("Argument '") == 1 and "database.type.1" not in msg, msg
        assert msg == ("Argument 'database.type': item 1 ('x'), item 2 (3): input should be 'postgres', 'byo' or "
                       "'redis'. Fix: make each item one of 'postgres', 'byo' or 'redis'."), msg  # --- mender6: Fix


async def test_concurrent_ensure_project_creates_exactly_one(server: ServerProc) -> None:
    async with mcp_session(server, server.keys["alice"]) as s:
        results = await asyncio.gather(*[call(s, "ensure_project", name="race-proj") for _ in range(12)])
        assert sum(r["created"] for r in results) == 1
        listed = await call(s, "list_projects")
        assert [p["name"] for p in listed["projects"]].count("race-proj") == 1


async def test_accounts_are_isolated(server: ServerProc) -> None:
    async with mcp_session(server, server.keys["alice"]) as a, mcp_session(server, server.keys["bob"]) as b:
        await call(a, "ensure_project", name="alice-secret")
        await call(a, "update_env_vars", project_name="alice-secret", env_vars={"TOKEN": "alice-token-123"})
        assert "alice-secret" not in [p["name"] for p in (await call(b, "list_projects"))["projects"]]
        for tool, args in [
            ("list_services", {"project_name": "alice-secret"}),
            ("list_env_vars", {"project_name": "alice-secret", "reveal": True}),
            ("get_database_credentials", {"project_name": "alice-secret"}),
            ("update_env_vars", {"project_name": "alice-secret", "env_vars": {"X": "1"}}),
            ("delete", {"project_name": "alice-secret", "confirm": "alice-secret"}),
        ]:
            msg = await call_error(b, tool, **args)
            assert "no project named 'alice-secret'" in msg, (tool, msg)
        # project names are global (they form the URLs): bob is told to pick another, and given a free one
        msg = await call_error(b, "ensure_project", name="alice-secret")
        assert "project name 'alice-secret' is taken; try 'alice-secret-bob'" in msg, msg
        assert "Argument 'name'" in msg and "pass name='alice-secret-bob'" in msg and "project_name" not in msg, msg
        assert (await call(b, "ensure_project", name="alice-secret-bob"))["created"] is True
        env = await call(a, "list_env_vars", project_name="alice-secret")
        assert env["env"]["TOKEN"] != "alice-token-123" and env["masked"] is True
        env = await call(a, "list_env_vars", project_name="alice-secret", reveal=True)
        assert env["env"]["TOKEN"] == "alice-token-123"


async def test_env_payload_limits(server: ServerProc) -> None:
    async with mcp_session(server, server.keys["alice"]) as s:
        await call(s, "ensure_project", name="envlimits")
        msg = await call_error(s, "update_env_vars", project_name="envlimits", env_vars={"BIG": "x" * 70_000})
        assert "env_vars" in msg and "bytes" in msg
        msg = await call_error(s, "update_env_vars", project_name="envlimits", env_vars={"1BAD": "x"})
        assert "not a valid environment variable name" in msg
        msg = await call_error(s, "update_env_vars", project_name="envlimits", env_vars={"PORT": "1"})
        assert "reserved" in msg
        r = await call(s, "update_env_vars", project_name="envlimits", env_vars={"A": "1", "B": None})
        assert r["set"] == ["A"] and r["unset"] == [] and r["restarted"] == []


async def test_env_unset_by_name(server: ServerProc) -> None:
    """`unset` (a list of names) removes variables; a null value in env_vars still does (callers from before `unset`,
    no longer advertised); a name both set and unset, or a call that changes nothing, is refused with what to pass."""
    async with mcp_session(server, server.keys["alice"]) as s:
        await call(s, "ensure_project", name="envunset")
        r = await call(s, "update_env_vars", project_name="envunset", env_vars={"A": "1", "B": "2", "C": "3"})
        assert r["set"] == ["A", "B", "C"], r
        r = await call(s, "update_env_vars", project_name="envunset", env_vars={"D": "4"}, unset=["A"])
        assert r["set"] == ["D"] and r["unset"] == ["A"], r
        r = await call(s, "update_env_vars", project_name="envunset", env_vars={"B": None})
        assert r["unset"] == ["B"], r
        assert sorted((await call(s, "list_env_vars", project_name="envunset"))["env"]) == ["C", "D"]
        # unsetting a name that is not set changes nothing, and says so (it said "stored; applied at the next
        # deploy_app", and with live services "sleeping services pick the values up when they wake")
        r = await call(s, "update_env_vars", project_name="envunset", unset=["NEVER_SET"])
        assert r["unset"] == [] and r["restarted"] == [], r
        assert r["note"].startswith("nothing changed") and "NEVER_SET" in r["note"], r
        msg = await call_error(s, "update_env_vars", project_name="envunset", env_vars={"C": "x"}, unset=["C"])
        assert "Argument 'unset'" in msg and "C is both set" in msg and "not both" in msg, msg
        msg = await call_error(s, "update_env_vars", project_name="envunset")
        assert "nothing to change" in msg and 'unset=["NAME"]' in msg, msg
        msg = await call_error(s, "update_env_vars", project_name="envunset", unset=["1BAD"])
        assert "not a valid environment variable name" in msg, msg
        assert sorted((await call(s, "list_env_vars", project_name="envunset"))["env"]) == ["C", "D"]


async def test_metrics_and_audit(server: ServerProc) -> None:
    """A call moves its own tool_calls sample (tool and outcome labels) and leaves an audit_log row."""
    account = f"auditor-{uuid.uuid4().hex[:6]}"
    key = server.create_key(account)
    project = f"audited-{uuid.uuid4().hex[:6]}"
    ok = {"tool": "ensure_project", "outcome": "ok"}
    failed = {"tool": "update_env_vars", "outcome": "error"}
    before = {o: metric_value(server, "inkmcp_tool_calls_total", **labels) for o, labels in (("ok", ok),
                                                                                            ("error", failed))}
    async with mcp_session(server, key) as s:
        await call(s, "ensure_project", name=project)
        msg = await call_error(s, "update_env_vars", project_name=f"{project}-missing", env_vars={"A": "secret-a"})
    assert "no project named" in msg
    assert metric_value(server, "inkmcp_tool_calls_total", **ok) == before["ok"] + 1
    assert metric_value(server, "inkmcp_tool_calls_total", **failed) == before["error"] + 1

    rows = store_query(server, "SELECT a.action, a.target, a.result, a.error, a.arguments::text FROM audit_log a "
                               "JOIN accounts c ON c.id = a.account_id WHERE c.name = %s ORDER BY a.id", (account,))
    assert [(action, target, result) for action, target, result, _, _ in rows] == [
        ("ensure_project", project, "ok"), ("update_env_vars", f"{project}-missing", "error")], rows
    assert "no project named" in rows[1][3]
    assert "secret-a" not in rows[1][4]  # arguments are stored redacted


@local_only("ensure_project and list_projects read and write InkMCP's store only (core.projects calls no provider): "
            "on Coolify's server the same 206 calls took 80-97 s of CI time and proved nothing more")
async def test_list_projects_is_bounded(server: ServerProc) -> None:
    key = server.create_key("hoarder")
    server.cli("accounts", "limits", "hoarder", "--max-projects", "205")  # default: 20 per account
    async with mcp_session(server, key) as s:
        for batch in range(0, 205, 41):
            await asyncio.gather(*[call(s, "ensure_project", name=f"p{i:03d}") for i in range(batch, batch + 41)])
        listed = await call(s, "list_projects")
        msg = await call_error(s, "ensure_project", name="p205")
    assert "account limit reached: 205 projects (INKMCP_MAX_PROJECTS_PER_ACCOUNT)" in msg, msg
    assert listed["total"] == 205 and listed["truncated"] is True
    assert [p["name"] for p in listed["projects"]] == [f"p{i:03d}" for i in range(200)]
