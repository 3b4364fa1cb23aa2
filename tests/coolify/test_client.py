"""The Coolify client against the HTTP stand-in: every request it sends validates against Coolify's spec, errors
are typed (retryable or not) with actionable messages, 429 waits for Retry-After, connection failures are
retried only for idempotent calls, the token never reaches a log or an error, and the API URL cannot carry the
token in clear text over the internet."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from inkmcp.coolify.client import (
    CoolifyAuthError,
    CoolifyBadRequest,
    CoolifyClient,
    CoolifyError,
    CoolifyNotFound,
    CoolifyPermissionError,
    CoolifyRateLimited,
    CoolifyUnavailable,
    CoolifyValidationError,
    RetryPolicy,
    check_api_url,
    check_token,
)
from inkmcp.coolify.models import SENTINEL_OFF, ServerCreate, ServerUpdate, ValidateServer
from inkmcp.coolify.spec import CoolifySpec, SpecError
from tests.coolify.conftest import FAST
from tests.coolify_standin import CoolifyStandin
from tests.support import free_port


class RecordingSleep:
    """asyncio.sleep that records what the client asked to wait."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(seconds)


async def test_every_endpoint_sends_spec_valid_requests(standin: CoolifyStandin, client: CoolifyClient,
                                                        key_uuid: str) -> None:
    """Each method once, against a stand-in that validates every request; the client also checks before sending
    (validate_with), so a spec violation would raise SpecError here."""
    uuid = await client.create_server(ServerCreate(ip="10.0.2.21", private_key_uuid=key_uuid, name="run1",
                                                   description="inkmcp", port=22, user="root",
                                                   is_build_server=False, instant_validate=False,
                                                   proxy_type="traefik"))
    assert [s.uuid for s in await client.list_servers()] == [uuid]
    await client.update_server(uuid, ServerUpdate(name="run-1", description=None))  # None: left as is
    got = await client.get_server(uuid)
    assert got.name == "run-1" and got.description == "inkmcp"
    assert (await client.get_sentinel(uuid)).is_sentinel_enabled  # Coolify's default since 2025-06
    off = await client.update_sentinel(uuid, SENTINEL_OFF)
    assert not off.is_sentinel_enabled and not off.is_metrics_enabled
    proxy = await client.get_proxy(uuid)
    assert proxy.has_configuration_field and proxy.configuration is None and proxy.proxy_type == "TRAEFIK"
    saved = await client.save_proxy_configuration(uuid, "services:\n  traefik:\n    image: 'traefik:v3.6'\n")
    assert saved.configuration == "services:\n  traefik:\n    image: 'traefik:v3.6'\n"
    assert await client.validate_server(uuid) == "Validation started."
    assert await client.validate_server(uuid, ValidateServer(install=False)) == "Validation started."
    assert await client.restart_proxy(uuid) == "Proxy restart queued."
    await client.delete_server(uuid)
    assert await client.list_servers() == []
    assert standin.request_violations == []
    sent = {r.operation for r in standin.requests}
    assert sent >= {"create-server", "list-servers", "update-server-by-uuid", "get-server-by-uuid",
                    "get-server-sentinel", "update-server-sentinel", "get-server-proxy",
                    "save-server-proxy-configuration", "validate-server-by-uuid", "restart-server-proxy",
                    "delete-server-by-uuid"}
    put = next(r for r in standin.requests if r.operation == "save-server-proxy-configuration")
    assert set(put.body) == {"configuration"} and "\n" not in put.body["configuration"]  # base64, as the spec asks


async def test_a_request_outside_the_spec_never_leaves(standin: CoolifyStandin, client: CoolifyClient) -> None:
    with pytest.raises(SpecError, match="'wildcard_domain' is not in the spec"):
        await client.request("PATCH", "/servers/abc", json={"wildcard_domain": "x"})
    assert standin.requests == []


async def test_unknown_key_gets_coolifys_422_as_a_typed_error(standin: CoolifyStandin, token: str) -> None:
    """Without client-side validation the real refusal comes back, field by field."""
    async with CoolifyClient(standin.url, token, retry=FAST) as raw:
        uuid = standin.add_server("10.0.2.30").uuid
        with pytest.raises(CoolifyValidationError) as caught:
            await raw.request("PATCH", f"/servers/{uuid}", json={"name": "x", "wildcard_domain": "y"},
                              idempotent=True)
    e = caught.value
    assert e.status == 422 and e.errors == {"wildcard_domain": ["This field is not allowed."]}
    assert not e.retryable and "wildcard_domain: This field is not allowed." in str(e)
    assert len(standin.requests) == 1  # never retried
    assert standin.request_violations  # and the stand-in saw the contract broken


async def test_wrong_token_is_a_clear_permanent_error(standin: CoolifyStandin) -> None:
    bad = "7|not-a-token-coolify-knows"
    async with CoolifyClient(standin.url, bad, retry=FAST) as c:
        with pytest.raises(CoolifyAuthError) as caught:
            await c.list_servers()
    e = caught.value
    assert e.status == 401 and not e.retryable
    assert str(e).startswith("GET /servers: Coolify 401: Unauthenticated.")
    assert "Keys & Tokens" in str(e) and "coolifyApiToken" in str(e)
    assert bad not in str(e) and "not-a-token" not in repr(e.args)
    assert standin.log() == ["GET /api/v1/servers 401"]  # one request, no retry


async def test_missing_ability_names_it(standin: CoolifyStandin) -> None:
    read_only = standin.add_token("read")
    async with CoolifyClient(standin.url, read_only, retry=FAST) as c:
        uuid = standin.add_server("10.0.2.31").uuid
        proxy = await c.get_proxy(uuid)
        assert not proxy.has_configuration_field  # the DB copy needs read:sensitive
        with pytest.raises(CoolifyPermissionError) as caught:
            await c.update_sentinel(uuid, SENTINEL_OFF)
    assert "Missing required permissions: write" in str(caught.value)
    assert "read:sensitive, write" in str(caught.value) and not caught.value.retryable
    standin.api_enabled = False
    async with CoolifyClient(standin.url, read_only, retry=FAST) as c:
        with pytest.raises(CoolifyPermissionError, match="Settings → Advanced"):
            await c.list_servers()


async def test_not_found_and_refusals_are_typed(standin: CoolifyStandin, client: CoolifyClient,
                                                key_uuid: str) -> None:
    with pytest.raises(CoolifyNotFound, match="Server not found"):
        await client.get_server("doesnotexist000000000000")
    standin.add_server("10.0.2.40", team_id=5)  # another team's server at the same IP
    with pytest.raises(CoolifyBadRequest, match="already in use"):
        await client.create_server(ServerCreate(ip="10.0.2.40", private_key_uuid=key_uuid))


async def test_429_waits_for_retry_after_then_succeeds(tmp_path: Path, spec: CoolifySpec) -> None:
    """Two requests per second per user: the third waits the Retry-After Coolify sends, then goes through."""
    with CoolifyStandin(tmp_path, rate_limit=2, rate_window=1.0, spec=spec) as standin:
        token = standin.add_token("read")
        sleep = RecordingSleep()
        async with CoolifyClient(standin.url, token, validate_with=spec, sleep=sleep) as c:
            for _ in range(3):
                assert await c.list_servers() == []
        statuses = [r.status for r in standin.requests]
        assert statuses == [200, 200, 429, 200]
        assert sleep.calls == [1.0]  # Retry-After: 1, not a guessed backoff
        limited, after = standin.requests[2], standin.requests[3]
        assert after.at - limited.at >= 0.95
        assert standin.response_violations == [] and standin.request_violations == []


async def test_429_beyond_the_wait_budget_is_handed_back(tmp_path: Path, spec: CoolifySpec) -> None:
    with CoolifyStandin(tmp_path, rate_limit=1, rate_window=60.0, spec=spec) as standin:
        token = standin.add_token("read")
        sleep = RecordingSleep()
        policy = RetryPolicy(attempts=5, max_total_wait=5.0)
        async with CoolifyClient(standin.url, token, sleep=sleep, retry=policy) as c:
            await c.list_servers()
            started = time.monotonic()
            with pytest.raises(CoolifyRateLimited) as caught:
                await c.list_servers()
        assert time.monotonic() - started < 1.0 and sleep.calls == []
        e = caught.value
        assert e.retryable and e.retry_after is not None and 55 <= e.retry_after <= 60
        assert [r.status for r in standin.requests] == [200, 429]


async def test_laravel_html_429_without_accept_json_is_not_what_the_client_gets(tmp_path: Path) -> None:
    """The client always asks for JSON; a client that did not would get Laravel's HTML page (no message)."""
    import httpx

    with CoolifyStandin(tmp_path, rate_limit=0) as standin:
        token = standin.add_token("read")
        async with httpx.AsyncClient() as plain:
            r = await plain.get(f"{standin.url}/api/v1/servers", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 429 and r.headers["content-type"].startswith("text/html")
        async with CoolifyClient(standin.url, token, retry=RetryPolicy(attempts=1)) as c:
            with pytest.raises(CoolifyRateLimited, match="Too Many Attempts"):
                await c.list_servers()


async def test_connect_errors_are_retried_for_idempotent_calls_only(tmp_path: Path, spec: CoolifySpec) -> None:
    """Coolify comes up while the client is backing off: the GET succeeds; a POST is never repeated."""
    port = free_port()
    standin = CoolifyStandin(tmp_path, spec=spec, port=port)
    token = standin.add_token("read", "write")
    key = standin.add_private_key()
    started: list[bool] = []

    async def sleep_then_start(seconds: float) -> None:
        if not started:
            standin.start()
            started.append(True)

    try:
        async with CoolifyClient(f"http://127.0.0.1:{port}", token, sleep=sleep_then_start, retry=FAST) as c:
            assert await c.list_servers() == []
        assert standin.log() == ["GET /api/v1/servers 200"]
    finally:
        standin.stop()

    nobody = free_port()
    sleep = RecordingSleep()
    async with CoolifyClient(f"http://127.0.0.1:{nobody}", token, sleep=sleep, retry=FAST) as c:
        with pytest.raises(CoolifyUnavailable) as caught:
            await c.create_server(ServerCreate(ip="10.0.2.50", private_key_uuid=key))
        assert sleep.calls == [] and caught.value.retryable  # not repeated, but the caller may
        with pytest.raises(CoolifyUnavailable, match="cannot connect"):
            await c.get_server("x")
        assert len(sleep.calls) == FAST.attempts - 1


async def test_token_is_never_logged_or_printed(standin: CoolifyStandin, token: str, key_uuid: str,
                                                caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    rate_limited = CoolifyStandin(tmp_path / "rl", rate_limit=1, rate_window=1.0)
    with rate_limited:
        rl_token = rate_limited.add_token("read")
        async with CoolifyClient(rate_limited.url, rl_token) as c:
            await c.list_servers()
            await c.list_servers()  # 429, logged retry
        secrets = [token, rl_token, token.split("|")[1], rl_token.split("|")[1]]
        async with CoolifyClient(standin.url, token) as c:
            uuid = await c.create_server(ServerCreate(ip="10.0.2.60", private_key_uuid=key_uuid))
            await c.get_server(uuid)
            errors: list[CoolifyError] = []
            for call in (c.get_server("nope"), c.request("PATCH", f"/servers/{uuid}", json={"bad": 1})):
                try:
                    await call
                except CoolifyError as e:
                    errors.append(e)
            assert len(errors) == 2
            shown = [repr(c), str(c.__dict__.get("_token"))] + [str(e) for e in errors] + [repr(e) for e in errors]
    logged = [r.getMessage() + repr(r.args) + repr(r.__dict__) for r in caplog.records]
    assert any("coolify GET /servers -> 200" in m for m in logged)  # the client does log its calls
    assert any("rate limited" in m for m in logged)
    for text in logged + shown:
        for s in secrets:
            assert s not in text


@pytest.mark.parametrize(("url", "normalised"), [
    ("https://coolify.example.com", "https://coolify.example.com"),
    ("https://coolify.example.com/api/v1/", "https://coolify.example.com"),
    ("http://10.0.1.10:8000", "http://10.0.1.10:8000"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
    ("http://localhost:8000", "http://localhost:8000"),
    ("http://100.64.1.2:8000", "http://100.64.1.2:8000"),
    ("http://[fd00::10]:8000", "http://[fd00::10]:8000"),
])
def test_api_url_private_or_https_is_accepted(url: str, normalised: str) -> None:
    assert check_api_url(url) == normalised


@pytest.mark.parametrize(("url", "message"), [
    ("http://203.0.113.5:8000", r"clear text to the public address 203\.0\.113\.5 \(review finding 14\); use https://"),
    ("http://coolify.example.com", r"a name that may resolve to a public address .* use https://coolify\.example\.com"),
    ("http://[2001:db8::1]:8000", "public address"),
    ("ftp://10.0.1.10", "not an http"),
    ("https://user:pw@coolify.example.com", "carries credentials"),
    ("coolify.example.com", "not an http"),
])
def test_api_url_that_would_leak_the_token_is_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_api_url(url, "INKMCP_COOLIFY_URL")
    with pytest.raises(ValueError, match="coolifyApiUrl"):
        CoolifyClient(url, "1|abc", url_setting="coolifyApiUrl")


def test_token_format_is_checked() -> None:
    with pytest.raises(ValueError, match="whitespace"):
        check_token("1|abc\n")
    with pytest.raises(ValueError, match="empty"):
        check_token(" ")


async def test_a_transport_of_the_callers_gets_exactly_the_request_httpx_would_have_sent() -> None:
    """Issue 8 (overhead7): with a transport of its caller's (the provider's PolicyTransport), the client hands each
    attempt straight to it instead of through httpx.AsyncClient; what reaches the transport is byte for byte what
    the httpx client built before (URL with the base path and percent-encoded segments, query, headers as spelled
    and in their order, JSON body, timeouts), and the answer reads the same; a transport error names its request."""
    import httpx

    seen: list[tuple[str, str, list[tuple[bytes, bytes]], bytes, dict[str, object]]] = []

    class Recording(httpx.AsyncBaseTransport):
        fail = False

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if self.fail:
                raise httpx.ConnectError("refused")
            seen.append((request.method, str(request.url), list(request.headers.raw), await request.aread(),
                         dict(request.extensions)))  # fmt: skip
            return httpx.Response(200, json={"uuid": "u" * 24, "message": "ok é"})

    transport = Recording()
    c = CoolifyClient("http://127.0.0.1:9/base/", "1|tok", transport=transport)
    auth = {"Authorization": "Bearer 1|tok"}
    try:
        for method, path, body, query in (("GET", "/applications/abc", None, None),
                                          ("POST", "/deploy", None, {"uuid": "a b", "force": "false"}),
                                          ("PATCH", "/applications/abc/envs/bulk",
                                           {"data": [{"key": "K", "value": "vé\n"}]}, None),
                                          ("GET", "servers/ä x", None, None)):  # fmt: skip
            direct = await c._send(method, path, body, query, dict(auth))
            through = await c._http.request(method, path, json=body, params=query, headers=dict(auth))
            assert seen[-2] == seen[-1], (seen[-2], seen[-1])
            assert direct.status_code == through.status_code and direct.json() == through.json()
        assert seen[0][1] == "http://127.0.0.1:9/base/api/v1/applications/abc"
        transport.fail = True
        with pytest.raises(httpx.ConnectError) as caught:
            await c._send("GET", "/servers", None, None, dict(auth))
        assert caught.value.request.url.path == "/base/api/v1/servers"
    finally:
        await c.aclose()
