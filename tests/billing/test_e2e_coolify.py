"""The zero-credits story of tests/billing/test_e2e.py under Coolify compute, end to end: a real `inkmcp serve` on
the Coolify stand-in (whose runner really runs what is deployed, behind its model of Coolify's Traefik + Sablier
reading the router files InkMCP writes over a real sshd), real MCP client, Stripe stand-in, signed webhook.

  alice: an on_demand service and a persistent one go live -> the balance reaches zero -> the next deploy is
  refused -> the on_demand service answers 402 instead of waking (its router now points at InkMCP's
  /_inkmcp/suspended/<token> page; Sablier is no longer asked) -> after the grace period the persistent one's
  application is stopped in Coolify and its host answers 402 too -> both show `suspended` -> a signed Stripe top-up
  -> both answer again, with no new deployment (InkMCP's or a new Coolify application) and nothing deleted.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

from inkmcp.billing.stripe import sign
from tests.billing.conftest import STRIPE_KEY, STRIPE_SECRET
from tests.billing.stripe_standin import StripeStandIn
from tests.billing.test_e2e import APP, paid_checkout, until
from tests.e2e import coolify as e2e_coolify
from tests.e2e.probes import store_query
from tests.support import ServerProc, call, call_error, git_repo, mcp_session, traversable_tmpdir

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

# persistent: 72,000 per GiB-hour x 0.5 GiB = 10 minor units a second; on_demand: 36,000 per awake hour = 10/s.
PRICES = {"persistent": 72000, "on_demand": 36000, "static": 0, "build_minute": 0, "db_gb_month": 0}
STARTER = 150


@pytest.fixture(scope="module")
def server(stripe: StripeStandIn) -> Iterator[ServerProc]:
    real = e2e_coolify.make_server

    def with_public_url(prefix: str, **env: str) -> ServerProc:
        """INKMCP_PUBLIC_URL is the server's own address (its port is chosen here): the run server's proxy sends a
        suspended service's requests there."""
        srv = real(prefix, **env)
        srv.env["INKMCP_PUBLIC_URL"] = f"http://127.0.0.1:{srv.port}"
        return srv

    env = {"INKMCP_PRICES": json.dumps(PRICES), "INKMCP_METERING_INTERVAL_S": "1",
           "INKMCP_STRIPE_API_KEY": STRIPE_KEY, "INKMCP_STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
           "INKMCP_STRIPE_API_BASE": stripe.base, "INKMCP_STARTER_CREDITS": str(STARTER), "INKMCP_GRACE_S": "2",
           "INKMCP_RATE_LIMIT_BURST": "100"}
    with mock.patch.object(e2e_coolify, "make_server", with_public_url), \
            e2e_coolify.coolify_server("inkmcp-billing-c-", ("alice",), **env) as srv:
        yield srv


@pytest.fixture(scope="module")
def repos() -> Iterator[Path]:
    base = traversable_tmpdir("inkmcp-billing-c-repos-")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def get(server: ServerProc, url: str) -> httpx.Response:
    host = httpx.URL(url).netloc.decode()
    return httpx.get(f"http://127.0.0.1:{server.proxy_port}/", headers={"Host": host}, timeout=70)


async def live(s: Any, **kw: Any) -> dict[str, Any]:
    view = await call(s, "deploy_app", **kw)
    if view["status"] != "live":
        view = await call(s, "wait_for_deployment", deployment_id=view["deployment_id"], timeout_seconds=90)
    assert view["status"] == "live", view
    return view


def app_of(server: Any, service_url: str) -> Any:
    """The stand-in's Coolify application serving `service_url`'s service (its routed process)."""
    host = httpx.URL(service_url).host
    project = host.split(".")[0].split("-", 1)[1]
    rows = store_query(server, "SELECT sv.provider_ref FROM services sv JOIN projects p ON p.id = sv.project_id "
                               "WHERE p.name = %s", (project,))
    ref = rows[0][0]
    ref = ref.get("coolify", ref) if isinstance(ref, dict) else ref
    return server.standin.applications[ref["apps"][ref["routed"]]]


async def test_zero_credits_under_coolify_stop_and_402_then_a_top_up_brings_both_back(
        server: Any, repos: Path, stripe: StripeStandIn) -> None:
    for name in ("blog", "shop"):
        git_repo(repos / name, APP)
    async with mcp_session(server, server.keys["alice"]) as s:
        blog = await live(s, repo_url=str(repos / "blog"), start_command="python app.py", mode="on_demand",
                          env_vars={"WHO": "bob"})
        shop = await live(s, repo_url=str(repos / "shop"), start_command="python app.py", mode="persistent",
                          env_vars={"WHO": "alice"})
        assert (await asyncio.to_thread(get, server, shop["url"])).text == "hello from alice"
        deployments = store_query(server, "SELECT count(*) FROM deployments")[0][0]
        creates = sum(1 for r in server.standin.requests if r.method == "POST" and r.path.startswith(
            "/api/v1/applications/"))

        async def broke() -> dict[str, Any] | None:
            u = await call(s, "get_usage")
            return u if u["balance"] <= 0 else None

        usage = await until("alice's balance to reach zero", broke, timeout=60)
        assert usage["blocked"] is True
        refused = await call_error(s, "deploy_app", repo_url=str(repos / "shop"), start_command="python app.py",
                                   mode="persistent", env_vars={"WHO": "alice-2"})
        assert "deploy_app refused" in refused and re.search(r"has no credits left \(balance -?\d+,", refused)
        assert f"127.0.0.1:{server.port}/dashboard" in refused  # INKMCP_PUBLIC_URL's dashboard

        def answers_402(url: str) -> Any:
            def check() -> str | None:
                r = get(server, url)
                return r.text if r.status_code == 402 else None
            return lambda: asyncio.to_thread(check)

        page = await until("the on_demand service to answer 402 instead of waking", answers_402(blog["url"]))
        assert page.startswith("web.blog is asleep: no credits left on its account") and "dashboard" in page
        page = await until("the persistent service to answer 402 after the grace period", answers_402(shop["url"]),
                           timeout=40)
        assert page.startswith("web.shop is asleep")
        shop_app = app_of(server, shop["url"])

        def stopped() -> bool:  # as Coolify's API reports it
            r = httpx.get(f"{server.standin.url}/api/v1/applications/{shop_app.uuid}",
                          headers={"Authorization": f"Bearer {server.token}"}, timeout=10)
            return str(r.json()["status"]).startswith("exited")

        await until("Coolify to show the persistent application stopped", lambda: asyncio.to_thread(stopped))
        stops = [r for r in server.standin.requests if r.method == "POST" and r.path.endswith("/stop")]
        assert [r.path for r in stops] == [f"/api/v1/applications/{shop_app.uuid}/stop"]
        assert all(r.query.get("docker_cleanup") == "false" for r in stops)  # nothing pruned
        for p in ("blog", "shop"):
            view = (await call(s, "list_services", project_name=p))["services"][0]
            assert view["state"] == "suspended" and view["health"] == "ok", view  # paused, not failing
        assert "sablier" not in json.dumps(_router(server, "blog"))  # Sablier is no longer asked to start it

        event = await asyncio.to_thread(paid_checkout, stripe, "alice", 100000)
        body = json.dumps(event).encode()
        hook = f"http://127.0.0.1:{server.port}/webhooks/stripe"
        forged = await asyncio.to_thread(httpx.post, hook, content=body, headers={
            "Stripe-Signature": sign(body, "whsec_" + "x" * 32, int(time.time()))})
        assert forged.status_code == 400 and (await call(s, "get_usage"))["blocked"] is True
        paid = await asyncio.to_thread(httpx.post, hook, content=body, headers={
            "Stripe-Signature": sign(body, STRIPE_SECRET, int(time.time()))})
        assert paid.status_code == 200 and paid.json()["credited"] is True, paid.text

        def answers(url: str, text: str) -> Any:
            def check() -> bool:
                r = get(server, url)
                return r.status_code == 200 and r.text == text
            return lambda: asyncio.to_thread(check)

        await until("the persistent service to run again", answers(shop["url"], "hello from alice"), timeout=60)
        await until("the on_demand service to wake again", answers(blog["url"], "hello from bob"), timeout=60)
        assert "sablier" in json.dumps(_router(server, "blog"))  # the router it had, back
        assert store_query(server, "SELECT count(*) FROM deployments")[0][0] == deployments  # no redeploy
        assert sum(1 for r in server.standin.requests if r.method == "POST" and r.path.startswith(
            "/api/v1/applications/") and not r.path.endswith("/stop")) == creates  # no new application
        assert not any(r.method == "DELETE" for r in server.standin.requests)  # nothing deleted
        assert store_query(server, "SELECT count(*) FROM billing_suspensions")[0][0] == 0
        for p in ("blog", "shop"):
            assert (await call(s, "list_services", project_name=p))["services"][0]["state"] != "suspended"


def _router(server: Any, project: str) -> dict[str, Any]:
    """The router document InkMCP wrote for the project's service on the run server (over SSH)."""
    rows = store_query(server, "SELECT CAST(sv.id AS text) FROM services sv JOIN projects p ON p.id = sv.project_id "
                               "WHERE p.name = %s", (project,))
    run = next(iter(server.standin.servers.values()))
    path = server.standin.node_root(run.ip) / "data" / "coolify" / "proxy" / "dynamic" / f"inkmcp-{rows[0][0]}.yml"
    import yaml

    return yaml.safe_load(path.read_text())  # type: ignore[no-any-return]


async def test_a_restart_while_suspended_resumes_from_the_database(server: Any) -> None:
    """Runs after the story above (alice can pay, both services answer). A monthly cap below this month's spend
    blocks the account at once; with both services suspended the server is stopped, the cap lifted by the operator
    CLI while it is down, and the restarted server (nothing in its memory) puts both back from billing_suspensions."""
    urls = {p: r[0] for p in ("blog", "shop") for r in store_query(
        server, "SELECT sv.url FROM services sv JOIN projects p ON p.id = sv.project_id WHERE p.name = %s", (p,))}
    capped = server.cli("credits", "cap", "--account", "alice", "--amount", "1")
    assert capped.returncode == 0, capped.stdout + capped.stderr

    def page(url: str) -> Any:
        def check() -> bool:
            r = get(server, url)
            return r.status_code == 402 and "monthly spend cap is reached" in r.text
        return lambda: asyncio.to_thread(check)

    for p in ("blog", "shop"):
        await until(f"{p} to answer 402 at the cap", page(urls[p]), timeout=40)
    assert store_query(server, "SELECT count(*) FROM billing_suspensions WHERE state = 'suspended'")[0][0] == 2
    assert server.stop() == 0
    lifted = server.cli("credits", "cap", "--account", "alice", "--reset")
    assert lifted.returncode == 0, lifted.stdout + lifted.stderr
    server.start()

    def answers(url: str, text: str) -> Any:
        def check() -> bool:
            r = get(server, url)
            return r.status_code == 200 and r.text == text
        return lambda: asyncio.to_thread(check)

    await until("the persistent service to run again after the restart", answers(urls["shop"], "hello from alice"),
                timeout=60)
    await until("the on_demand service to wake again after the restart", answers(urls["blog"], "hello from bob"),
                timeout=60)
    assert store_query(server, "SELECT count(*) FROM billing_suspensions")[0][0] == 0
