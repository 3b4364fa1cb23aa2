"""End to end through the real MCP transport: a real `inkmcp serve` with prices that make credits run out in
seconds, real apps behind the local provider's proxy, the operator CLI in its own process.

One server for the whole story (it is the expensive part):
  alice (persistent): deploy goes live -> balance reaches zero -> the next deploy is refused with the balance, the
  cap and how to add credits -> after the grace period the service sleeps and answers 402 -> a top-up ->
  the service wakes and deploys work again, without redeploying; get_usage shows it all along.
  "a grant" here is a Stripe top-up: Checkout Session through the stand-in, signed webhook to the server.
  then an on_demand service of the same account: asleep costs nothing, awake costs.
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

import httpx
import pytest

from inkmcp.billing.stripe import sign
from tests.billing.conftest import STRIPE_KEY, STRIPE_SECRET
from tests.billing.stripe_standin import StripeStandIn
from tests.e2e.probes import store_query
from tests.support import (
    ServerProc,
    call,
    call_error,
    dispose_server,
    git_repo,
    make_server,
    mcp_session,
    traversable_tmpdir,
    wait_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

APP = {
    "app.py": '''
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        data = b"hello from " + os.environ.get("WHO", "?").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
''',
}
# persistent: 72,000 per GiB-hour x 0.5 GiB = 10 minor units a second; on_demand: 36,000 per awake hour = 10/s.
PRICES = {"persistent": 72000, "on_demand": 36000, "static": 0, "build_minute": 0, "db_gb_month": 0}
STARTER = 40


@pytest.fixture(scope="module")
def server(stripe: StripeStandIn) -> Iterator[ServerProc]:
    srv = make_server("inkmcp-billing-", INKMCP_PRICES=json.dumps(PRICES), INKMCP_METERING_INTERVAL_S="1",
                      INKMCP_STRIPE_API_KEY=STRIPE_KEY, INKMCP_STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
                      INKMCP_STRIPE_API_BASE=stripe.base,
                      INKMCP_STARTER_CREDITS=str(STARTER), INKMCP_GRACE_S="2", INKMCP_IDLE_TIMEOUT="2",
                      INKMCP_RETRY_BREAKER_FAILURES="2", INKMCP_RATE_LIMIT_BURST="100")
    try:
        srv.start()
        srv.create_key("alice")  # after the start: made in this process (tests.support.ServerProc.create_key)
        yield srv
    finally:
        dispose_server(srv)


@pytest.fixture(scope="module")
def repos() -> Iterator[Path]:
    """Repos the project users can read (pytest's tmp dirs are 0700 under root)."""
    base = traversable_tmpdir("inkmcp-billing-repos-")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def repo(base: Path, name: str) -> str:
    path = base / name
    git_repo(path, APP)
    return str(path)


def get(server: ServerProc, url: str) -> httpx.Response:
    host = httpx.URL(url).netloc.decode()
    return httpx.get(f"http://127.0.0.1:{server.proxy_port}/", headers={"Host": host}, timeout=30)


async def until(what: str, check: Any, timeout: float = 30.0, every: float = 0.3) -> Any:
    """`tests.support.wait_for`, the thing waited for named first (it reads as the sentence)."""
    return await wait_for(check, timeout, what, every)


async def test_credits_run_out_refuse_sleep_and_come_back_with_a_top_up(
        server: ServerProc, repos: Path, stripe: StripeStandIn) -> None:
    async with mcp_session(server, server.keys["alice"]) as s:
        usage = await call(s, "get_usage")
        assert usage["billing"] is True and usage["balance"] == STARTER

        shop = repo(repos, "shop")
        view = await call(s, "deploy_app", repo_url=shop, start_command="python app.py",
                          mode="persistent", env_vars={"WHO": "alice"})
        if view["status"] != "live":
            view = await call(s, "wait_for_deployment", deployment_id=view["deployment_id"], timeout_seconds=50)
        assert view["status"] == "live", view
        assert get(server, view["url"]).text == "hello from alice"

        async def broke() -> dict[str, Any] | None:
            u = await call(s, "get_usage")
            return u if u["balance"] <= 0 else None

        usage = await until("alice's balance to reach zero", broke)
        assert usage["blocked"] is True and usage["spent_this_month"] >= STARTER
        assert usage["top"] and usage["top"][0]["name"] == "shop/web" and usage["top"][0]["kind"] == "persistent"
        assert "credits grant --account alice" in usage["note"]

        refused = await call_error(s, "deploy_app", repo_url=shop, start_command="python app.py",
                                   mode="persistent", env_vars={"WHO": "alice-2"})
        assert "deploy_app refused" in refused and re.search(r"has no credits left \(balance -?\d+,", refused)
        assert "no monthly cap" in refused and "inkmcp credits grant --account alice" in refused
        refused_env = await call_error(s, "update_env_vars", project_name="shop", env_vars={"WHO": "x"})
        assert "update_env_vars refused" in refused_env

        def asleep() -> bool:
            r = get(server, view["url"])
            return r.status_code == 402 and "credits" in r.text

        await until("the persistent service to sleep after the grace period", lambda: asyncio.to_thread(asleep))
        services = await call(s, "list_services", project_name="shop")
        assert services["services"][0]["name"] == "web"  # nothing deleted

        # a bad signature changes nothing; a top-up through Stripe (the stand-in) with a signed webhook does
        event = await asyncio.to_thread(paid_checkout, stripe, "alice", 100000)
        body = json.dumps(event).encode()
        hook = f"http://127.0.0.1:{server.port}/webhooks/stripe"
        forged = await asyncio.to_thread(httpx.post, hook, content=body, headers={
            "Stripe-Signature": sign(body, "whsec_" + "x" * 32, int(time.time()))})
        assert forged.status_code == 400 and (await call(s, "get_usage"))["blocked"] is True
        paid = await asyncio.to_thread(httpx.post, hook, content=body, headers={
            "Stripe-Signature": sign(body, STRIPE_SECRET, int(time.time()))})
        assert paid.status_code == 200 and paid.json()["credited"] is True, paid.text

        def awake() -> bool:
            r = get(server, view["url"])
            return r.status_code == 200 and r.text == "hello from alice"

        await until("the service to wake without a redeploy", lambda: asyncio.to_thread(awake))
        usage = await call(s, "get_usage")
        assert usage["blocked"] is False and 0 < usage["balance"] <= 100000 + STARTER - usage["spent_this_month"]
        again = await call(s, "deploy_app", repo_url=shop, start_command="python app.py", mode="persistent",
                           env_vars={"WHO": "alice-2"})  # the deploy refused above
        if again["status"] != "live":
            again = await call(s, "wait_for_deployment", deployment_id=again["deployment_id"], timeout_seconds=50)
        assert again["status"] == "live" and again["deployment_id"] != view["deployment_id"], again
        assert get(server, view["url"]).text == "hello from alice-2"

    grant = ("credits", "grant", "--account", "alice", "--amount", "500", "--reason", "e2e", "--id", "e2e-1")
    granted = server.cli(*grant)
    assert "granted 500" in granted.stdout, granted.stdout + granted.stderr
    again = server.cli(*grant)
    assert "nothing added" in again.stdout
    report = server.cli("usage", "--account", "alice").stdout
    assert "shop/web" in report and "persistent" in report
    assert "alice" in server.cli("usage").stdout


def paid_checkout(stripe: StripeStandIn, account: str, amount: int) -> dict[str, Any]:
    """A Checkout Session created through Stripe's API (the stand-in), paid: the event Stripe then sends."""
    r = httpx.post(f"{stripe.base}/v1/checkout/sessions", headers={"Authorization": f"Bearer {STRIPE_KEY}"}, data={
        "mode": "payment", "success_url": "https://x", "client_reference_id": account, "line_items[0][quantity]": "1",
        "metadata[inkmcp_account]": account,  # what InkMCP's own sessions carry (inkmcp/billing/stripe.py)
        "line_items[0][price_data][currency]": "eur", "line_items[0][price_data][unit_amount]": str(amount),
        "line_items[0][price_data][product_data][name]": "InkMCP credits"})
    assert r.status_code == 200, r.text
    return stripe.complete(r.json()["id"])


async def test_on_demand_costs_only_while_awake(server: ServerProc, repos: Path) -> None:
    """Runs after the story above (alice has credits again)."""
    async with mcp_session(server, server.keys["alice"]) as s:
        view = await call(s, "deploy_app", repo_url=repo(repos, "blog"), start_command="python app.py",
                          mode="on_demand", env_vars={"WHO": "bob"})
        if view["status"] != "live":
            view = await call(s, "wait_for_deployment", deployment_id=view["deployment_id"], timeout_seconds=50)
        assert view["status"] == "live", view

        async def blog_cost() -> float:
            top = (await call(s, "get_usage"))["top"]
            return sum(t["cost"] for t in top if t["name"] == "blog/web" and t["kind"] == "on_demand")

        async def sleeping() -> bool:
            return (await call(s, "list_services", project_name="blog"))["services"][0]["state"] == "sleeping"

        await until("the on_demand service to fall asleep", sleeping)
        asleep_at = time.time()

        def charged_through(t: float) -> Any:
            async def check() -> bool:
                rows = await asyncio.to_thread(store_query, server, "SELECT max(start_s + length_s) FROM "
                                               "billing_intervals")
                return rows[0][0] is not None and rows[0][0] >= t
            return check

        await until("the interval it fell asleep in to be charged", charged_through(asleep_at + 1))
        before = await blog_cost()
        await until("four more intervals to be charged", charged_through(asleep_at + 5))
        assert await blog_cost() == before  # asleep costs nothing

        assert (await asyncio.to_thread(get, server, view["url"])).text == "hello from bob"  # wakes it

        async def charged() -> float | None:
            cost = await blog_cost()
            return cost if cost > before else None

        await until("awake time to be charged", charged, timeout=20)


async def test_retry_loop_breaker_stops_the_same_failing_deploy_until_something_changes(
        server: ServerProc, repos: Path) -> None:
    """With INKMCP_RETRY_BREAKER_FAILURES=2 (5 by default: tests/billing/test_ledger.py checks the 6th), the third
    identical failing deploy is refused naming the failures; changed env vars make another deployment."""
    crash = {"start_command": "python -c 'import sys; print(\"boom\"); sys.exit(3)'", "mode": "persistent"}
    broken = repo(repos, "broken")
    async with mcp_session(server, server.keys["alice"]) as s:
        for _ in range(2):
            view = await call(s, "deploy_app", repo_url=broken, **crash)
            if view["status"] not in ("failed", "live"):
                view = await call(s, "wait_for_deployment", deployment_id=view["deployment_id"], timeout_seconds=50)
            assert view["status"] == "failed", view
        refused = await call_error(s, "deploy_app", repo_url=broken, **crash)
        assert "already failed 2 times" in refused and "change something first" in refused, refused
        changed = await call(s, "deploy_app", repo_url=broken, env_vars={"TRY": "3"}, **crash)
        assert changed["deployment_id"] != view["deployment_id"]


async def test_stripe_checkout_and_webhook_top_up_once_per_event(server: ServerProc, stripe: StripeStandIn) -> None:
    """Checkout Session through the stand-in; 50 concurrent signed webhook deliveries (30 events, 20 replays) to the
    real server credit exactly the 30 events; bad and stale signatures get 400 and change nothing."""
    from inkmcp.billing.ledger import Ledger
    from inkmcp.billing.settings import BillingSettings, Prices
    from inkmcp.billing.stripe import Stripe, StripeSettings
    from inkmcp.store.db import open_store
    from inkmcp.store.embedded import EmbeddedPostgres

    url = EmbeddedPostgres(server.data_dir / "pg" / "control").url(database="postgres").get_secret_value()
    store = await open_store(url, pool_size=2, max_overflow=0)
    try:
        client = Stripe(StripeSettings(api_key=STRIPE_KEY, webhook_secret=STRIPE_SECRET, api_base=stripe.base),
                        Ledger(store.sessionmaker, BillingSettings(prices=Prices(**PRICES))))
        checkout = await client.create_checkout_session("alice", 500, success_url="https://ink.example/ok",
                                                        cancel_url="https://ink.example/no")
        sid = checkout.rsplit("/", 1)[-1]
        assert checkout.startswith(stripe.base) and stripe.sessions[sid]["client_reference_id"] == "alice"
        assert stripe.sessions[sid]["amount_total"] == 500 and stripe.sessions[sid]["currency"] == "eur"
        bad_key = Stripe(StripeSettings(api_key="sk_test_wrong", api_base=stripe.base), client.ledger)
        with pytest.raises(Exception, match="Stripe did not accept this server's Stripe API key"):
            await bad_key.create_checkout_session("alice", 500, success_url="https://x", cancel_url="https://x")
    finally:
        await store.close()

    hook = f"http://127.0.0.1:{server.port}/webhooks/stripe"
    events = [stripe.complete(sid)]
    for amount in range(101, 130):
        other = await asyncio.to_thread(httpx.post, f"{stripe.base}/v1/checkout/sessions", headers={
            "Authorization": f"Bearer {STRIPE_KEY}"}, data={
            "mode": "payment", "success_url": "https://x", "client_reference_id": "alice",
            "metadata[inkmcp_account]": "alice",
            "line_items[0][quantity]": "1", "line_items[0][price_data][currency]": "eur",
            "line_items[0][price_data][unit_amount]": str(amount),
            "line_items[0][price_data][product_data][name]": "InkMCP credits"})
        events.append(stripe.complete(other.json()["id"]))
    deliveries = events + [events[i % 7] for i in range(20)]
    topups = "SELECT count(*), COALESCE(sum(amount), 0) FROM credit_entries WHERE kind = 'topup'"
    before = store_query(server, topups)[0]
    async with httpx.AsyncClient(timeout=30) as c:
        async def deliver(event: dict[str, Any]) -> int:
            body = json.dumps(event).encode()
            r = await c.post(hook, content=body, headers={"Stripe-Signature": sign(body, STRIPE_SECRET,
                                                                                   int(time.time())),
                                                          "Content-Type": "application/json"})
            return r.status_code

        codes = await asyncio.gather(*(deliver(e) for e in deliveries))
        assert set(codes) == {200}
        paid = sum(e["data"]["object"]["amount_total"] for e in events)
        entries = store_query(server, "SELECT count(*), sum(amount) FROM credit_entries WHERE kind = 'topup'")
        assert entries[0] == (before[0] + 30, before[1] + paid)

        # what an attacker can send: forged, stale, unsigned; and what Stripe may send that is not a payment
        forged = json.dumps({**events[0], "id": "evt_forged"}).encode()
        guessed = sign(forged, "whsec_guess", int(time.time()))
        r = await c.post(hook, content=forged, headers={"Stripe-Signature": guessed})
        assert r.status_code == 400
        stale = json.dumps({**events[1], "id": "evt_stale"}).encode()
        r = await c.post(hook, content=stale, headers={"Stripe-Signature": sign(stale, STRIPE_SECRET,
                                                                                int(time.time()) - 3600)})
        assert r.status_code == 400
        r = await c.post(hook, content=forged)
        assert r.status_code == 400
        other_type = json.dumps({"id": "evt_other", "type": "customer.created", "data": {"object": {}}}).encode()
        r = await c.post(hook, content=other_type, headers={"Stripe-Signature": sign(other_type, STRIPE_SECRET,
                                                                                     int(time.time()))})
        assert r.status_code == 200
    after = store_query(server, "SELECT count(*), sum(amount) FROM credit_entries WHERE kind = 'topup'")[0]
    assert after == (before[0] + 30, before[1] + paid)
    # metering keeps charging the live services meanwhile; the cached balance is still exactly the ledger's sum
    assert store_query(server, "SELECT b.balance = (SELECT sum(amount) FROM credit_entries e "
                               "WHERE e.account_id = b.account_id) FROM billing_accounts b")[0] == (True,)
